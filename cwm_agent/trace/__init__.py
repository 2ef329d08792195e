"""CWM as a world model of Python execution: real traces, predicted traces, their scores."""
