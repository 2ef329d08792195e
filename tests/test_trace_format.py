"""Trace format parsing, prediction through replay and the tiny model, and the scores.

Real traces here come from the tracer run in this process on trusted code (the
sandboxed path is tested in test_trace_tracer.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from transformers import PreTrainedTokenizerFast

from cwm_agent.model import LoadConfig, ModelSpec, SamplingConfig
from cwm_agent.model.hf import TransformersPolicy
from cwm_agent.model.policy import PolicyError
from cwm_agent.model.server import serve
from cwm_agent.protocol.chat import END_OF_TEXT, Piece, encode_pieces
from cwm_agent.trace import tracer
from cwm_agent.trace.actual import ActualTrace
from cwm_agent.trace.format import (
    FRAME_SEP,
    START_MARKER,
    End,
    Event,
    Frame,
    FrameError,
    TraceError,
    frame_pieces,
    mark_source,
    parse_frame,
    prompt_pieces,
    render_text,
    split_ids,
    split_text,
)
from cwm_agent.trace.models import (
    ReplayTraceModel,
    TokenTraceModel,
    load_trace_model,
    replay_script,
)
from cwm_agent.trace.predict import PredictLimits, TraceTask, next_frame, predict_traces
from cwm_agent.trace.scoring import same_value, score_trace, summarize
from cwm_agent.trace.view import CELL_CHARS, compare_table, trace_table

SOURCE = """def count(s, letter):
    n = 0
    for c in s:
        n += int(c == letter)
    return n


def f(word, c):
    num = count(word, c)
    return [num, word.upper()]
"""


def real(args: str = "'abca', 'a'") -> ActualTrace:
    return ActualTrace.from_json(tracer.run_job({"source": SOURCE, "function": "f", "args": args}))


def write_replay(path: Path, frames: list[Frame]) -> Path:
    path.write_text(json.dumps(replay_script([frame_pieces(f) for f in frames])))
    return path


def test_prompt_marks_the_entry_function_and_keeps_token_spellings_plain(
    cwm_tokenizer: PreTrainedTokenizerFast,
) -> None:
    marked = mark_source(SOURCE, "f")
    assert "def f(word, c):" + START_MARKER + "\n" in marked
    assert marked.count(START_MARKER) == 1
    with pytest.raises(TraceError, match="no top-level function 'g'"):
        mark_source(SOURCE, "g")
    with pytest.raises(TraceError, match="does not parse"):
        mark_source("def f(:\n", "f")
    spelled = Frame(Event.LINE, "    s = '<|frame_sep|>'", {"s": "'<|end_of_text|>'"})
    ids = encode_pieces(prompt_pieces(marked, [spelled]), cwm_tokenizer)
    frame_sep = cwm_tokenizer.convert_tokens_to_ids(FRAME_SEP)
    assert ids.count(frame_sep) == 2  # after the context and after the frame, nowhere else
    assert cwm_tokenizer.convert_tokens_to_ids(END_OF_TEXT) not in ids[1:]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty frame"),
        ('{"a": "1"}<|action_sep|>x', "does not start with an event token"),
        ('<|line_sep|>{"a": 1}<|action_sep|>x', "not a JSON object of strings"),
        ('<|line_sep|>{"a": "1"<|action_sep|>x', "not a JSON object of strings"),
        ('<|line_sep|>{"a": "1"}', "needs <|action_sep|>, got none"),
        ("<|return_sep|><|action_sep|>    return n", "then <|arg_sep|>"),
        ("<|return_sep|><|action_sep|>    return n<|arg_sep|>3", "not a JSON string"),
        ('<|return_sep|>{}<|action_sep|>x<|arg_sep|>"3"', "text before <|action_sep|>"),
        ("<|end_of_text|>tail", "text after <|end_of_text|>"),
        ("<|call_sep|>{}<|action_sep|>x<|end_of_text|>", "got <|action_sep|>, <|end_of_text|>"),
    ],
)
def test_malformed_frames_are_reported_not_raised(text: str, reason: str) -> None:
    parsed = parse_frame(split_text(text))
    assert isinstance(parsed, FrameError) and reason in parsed.reason
    assert parsed.text == text


def test_parse_well_formed_frames() -> None:
    lines = SOURCE.splitlines()
    assert parse_frame(split_text('<|line_sep|>{"n": ".."}<|action_sep|>    return n'), lines) == (
        Frame(Event.LINE, "    return n", {"n": ".."}, None, 5)
    )
    ret = parse_frame(split_text('<|return_sep|><|action_sep|>    return n<|arg_sep|>"2"'), lines)
    assert ret == Frame(Event.RETURN, "    return n", None, "2", 5)
    assert parse_frame(split_text("<|end_of_text|>")) == End()
    unknown = parse_frame(split_text("<|line_sep|>{}<|action_sep|>    nowhere()"), lines)
    assert isinstance(unknown, Frame) and unknown.lineno is None


def test_split_ids_keeps_text_that_spells_a_token(cwm_tokenizer: PreTrainedTokenizerFast) -> None:
    pieces = [Piece("x = '<|frame_sep|>'"), Piece(FRAME_SEP, special=True)]
    ids = encode_pieces(pieces, cwm_tokenizer)
    assert split_ids(ids, cwm_tokenizer) == pieces
    assert render_text(split_text("a<|frame_sep|>b")) == "a<|frame_sep|>b"


def test_replayed_real_trace_scores_perfectly(tmp_path: Path) -> None:
    trace = real()
    model = ReplayTraceModel(write_replay(tmp_path / "r.json", trace.frames))
    task = TraceTask("t", SOURCE, "f", (trace.frames[0],))
    (prediction,) = predict_traces(model, [task])
    assert prediction.valid and prediction.frames == trace.frames
    score = score_trace(prediction.frames, trace.frames, valid=True, expected_output="[2, 'ABCA']")
    assert summarize([score]) == {"valid": 100.0, "state": 100.0, "action": 100.0, "output": 100.0}
    assert score.first_divergence is None and score.aligned == len(trace.frames) - 1


def test_perturbed_trace_scores_exactly_what_it_should(tmp_path: Path) -> None:
    frames = real().frames
    wrong = list(frames)
    wrong[3] = Frame(wrong[3].event, wrong[3].line, {"s": "'zzz'", "letter": ".."})  # a state
    wrong[5] = Frame(Event.LINE, "    return n", wrong[5].locals)  # an action
    wrong[-1] = Frame(Event.RETURN, wrong[-1].line, None, "[3, 'ABCA']")  # state and output
    model = ReplayTraceModel(write_replay(tmp_path / "r.json", wrong))
    (prediction,) = predict_traces(model, [TraceTask("t", SOURCE, "f", (frames[0],))])
    score = score_trace(
        prediction.frames, frames, valid=prediction.valid, expected_output="[2, 'ABCA']"
    )
    aligned = len(frames) - 1
    assert score.aligned == aligned
    assert score.state_matches == aligned - 2 and score.action_matches == aligned - 1
    assert not score.output_match and score.first_divergence == 3
    figures = summarize([score])
    assert figures["state"] == pytest.approx(100 * (aligned - 2) / aligned)
    assert figures["valid"] == 100.0 and figures["output"] == 0.0


def test_a_short_trace_is_compared_over_its_aligned_frames(tmp_path: Path) -> None:
    frames = real().frames
    script = [*replay_script([frame_pieces(f) for f in frames[:4]])[:-1], "<|line_sep|>oops"]
    (tmp_path / "r.json").write_text(json.dumps(script))
    model = ReplayTraceModel(tmp_path / "r.json")
    (prediction,) = predict_traces(model, [TraceTask("t", SOURCE, "f", (frames[0],))])
    assert not prediction.valid and prediction.error is not None
    assert prediction.error.reason == "no <|frame_sep|> within 2048 tokens"
    score = score_trace(prediction.frames, frames, valid=prediction.valid, expected_output="2")
    assert (score.aligned, score.state_matches, score.first_divergence) == (3, 3, 4)


def test_replay_is_positional_and_runs_out_loudly(tmp_path: Path) -> None:
    frames = real().frames
    model = ReplayTraceModel(write_replay(tmp_path / "r.json", frames[:2]))
    task = TraceTask("t", SOURCE, "f", (frames[0],))
    assert next_frame(model, task, frames[:1]) == frames[1]
    assert next_frame(model, task, frames[:1]) == frames[1]  # the same prompt, the same frame
    assert next_frame(model, task, frames[:1], Event.LINE) == frames[1]
    assert next_frame(model, task, frames[:2]) == End()
    with pytest.raises(PolicyError, match="ran out"):
        next_frame(model, task, frames[:3])


def test_outputs_compare_as_python_values() -> None:
    assert same_value("(1, 2)", "(1,2)") and same_value("{'a': 1}", "{'a':1}")
    assert same_value("1", "1.0") and not same_value("'1'", "1")
    assert same_value("<object>", " <object> ") and not same_value(None, "1")


def test_custom_stop_ids(tiny_cwm_dir: Path) -> None:
    """generate_ids stops on the ids it is given (here, a token greedy decoding makes)."""
    policy = TransformersPolicy(
        str(tiny_cwm_dir), offline=True, sampling=SamplingConfig(greedy=True)
    )
    (free,) = policy.generate_ids([[5, 6, 7]], 8)
    stop = free.token_ids[3]
    first = free.token_ids.index(stop)
    (stopped,) = policy.generate_ids([[5, 6, 7]], 8, stop_ids=[stop])
    assert stopped.token_ids == free.token_ids[:first] and stopped.finish_reason == "stop"
    assert stopped.stop == policy.tokenizer.convert_ids_to_tokens(stop)


def test_tiny_model_predictions_end_cleanly(tiny_cwm_dir: Path) -> None:
    policy = TransformersPolicy(
        str(tiny_cwm_dir), offline=True, sampling=SamplingConfig(greedy=True)
    )
    frames = real().frames
    tasks = [TraceTask(str(i), SOURCE, "f", (frames[0],)) for i in range(2)]
    limits = PredictLimits(max_frames=4, max_frame_tokens=12)
    predictions = predict_traces(TokenTraceModel(policy, policy.tokenizer), tasks, limits)
    for prediction in predictions:
        assert not prediction.valid
        assert prediction.error is not None or prediction.cut
        assert prediction.frames[0] == frames[0]


def test_server_gets_token_ids_and_predicts_as_the_local_model(tiny_cwm_dir: Path) -> None:
    """`openai:` sends the prompt as ids to our completions server (as to vLLM): greedy,
    its frames are the in-process model's, token for token."""
    policy = TransformersPolicy(str(tiny_cwm_dir), offline=True)
    server, thread = serve(policy)
    try:
        load = LoadConfig(offline=True)
        remote = load_trace_model(
            ModelSpec.parse(f"openai:{server.url}", load), sample=False, tokenizer=str(tiny_cwm_dir)
        )
        local = load_trace_model(ModelSpec.parse(str(tiny_cwm_dir), load), sample=False)
        frames = real().frames
        task = TraceTask("t", SOURCE, "f", (frames[0],))
        limits = PredictLimits(max_frames=3, max_frame_tokens=24)
        (over_http,) = predict_traces(remote, [task], limits)
        (in_process,) = predict_traces(local, [task], limits)
        assert over_http.to_json() == in_process.to_json()
        assert over_http.error is not None or over_http.cut
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_long_values_are_cut_before_a_table_is_drawn() -> None:
    """A table lays out every character: a 5 MB value once took 35 s. Cells are cut first;
    --json keeps the whole value."""
    big = "x" * 300_000
    frames = [
        Frame(Event.CALL, "def f(s):", {"s": big}, None, 1),
        Frame(Event.RETURN, "    return s", None, big, 2),
    ]
    score = score_trace(frames, frames, valid=True, expected_output=big)
    for table in (trace_table(frames, "actual"), compare_table(frames, frames, score)):
        out = io.StringIO()
        Console(file=out, width=6000).print(table)  # wide enough that no cell folds
        assert len(out.getvalue()) < 50_000  # each 300,000-character value cut to 2,000
        assert f"({300_000 + 2 - CELL_CHARS:,} more characters: --json has all)" in out.getvalue()
