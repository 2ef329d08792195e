"""Test-time scaling: several candidate patches, generated and regression tests,
one patch selected (`pipeline.run_tts`)."""

from cwm_agent.tts.pipeline import TTSOptions, chosen, run_tts
from cwm_agent.tts.report import TTSReport, table

__all__ = ["TTSOptions", "TTSReport", "chosen", "run_tts", "table"]
