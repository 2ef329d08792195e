"""Test-time scaling: several candidate patches, generated and regression tests,
one patch selected (`pipeline.TTSRun`)."""

from cwm_agent.tts.options import TTSOptions
from cwm_agent.tts.pipeline import TTSRun, selected_candidate
from cwm_agent.tts.report import TTSReport, table

__all__ = ["TTSOptions", "TTSReport", "TTSRun", "selected_candidate", "table"]
