"""The knobs of test-time scaling; rollout budgets are the rollout's own."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TTSOptions(BaseModel):
    samples: int = Field(1, ge=1, description="candidate rollouts (K)")
    test_samples: int = Field(0, ge=0, description="test-generation rollouts (M)")
    jobs: int = Field(8, ge=1, description="containers running at once")
    test_cmd: str | None = None
    regression_timeout: float = Field(600.0, gt=0, description="seconds for the test suite")
    test_timeout: float = Field(60.0, gt=0, description="seconds for one generated test")

    @property
    def enabled(self) -> bool:
        """More than one plain rollout: several candidates, or generated tests."""
        return self.samples > 1 or self.test_samples > 0
