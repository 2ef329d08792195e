"""What `--model SPEC` names, parsed once where a command reads it, with its knobs.

- `replay:PATH` — scripted replies (`replay.py`);
- `openai:URL` — an OpenAI-compatible completions server such as vLLM (`openai_api.py`);
  `openai:URL,URL,...` — several of them, requests routed over them (`routing.py`);
- anything else — a Hugging Face model id or a local directory (`hf.py`, transformers).

Every backend takes the one `SamplingConfig` (as transformers' `GenerationConfig`
holds every generation knob); `LoadConfig` is how local weights are loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "facebook/cwm"  # the released CWM on the Hugging Face Hub
SpecKind = Literal["replay", "openai", "local"]
Quantization = Literal["fp8", "int8", "int4"]


class SamplingConfig(BaseModel):
    """How to pick tokens; the defaults are CWM's evaluation settings (docs/protocol.md §9).

    A temperature of 0 means greedy, as in OpenAI's API. A seed makes one
    `generate_ids` call reproducible (torch's global generator is seeded once, then
    the prompts are sampled in order); a server gets seed + the request's number.
    """

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    greedy: bool = False
    seed: int | None = None

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


class LoadConfig(BaseModel):
    """How a local model (a Hub id or a directory) is loaded; ignored by the other kinds."""

    model_config = ConfigDict(frozen=True)

    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    device_map: str | None = None
    quantization: Quantization | None = None
    attn_implementation: str | None = None
    offline: bool = False
    compile: bool | None = None  # compiled decoding; None: on a GPU only


class ModelSpec(BaseModel):
    """A `--model` value by kind, with how to load and sample it; `str()` gives it back."""

    model_config = ConfigDict(frozen=True)

    kind: SpecKind
    target: str = Field(description="replay: the path; openai: URL[,URL...]; local: id or dir")
    load: LoadConfig = Field(default_factory=LoadConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @classmethod
    def parse(
        cls, text: str, load: LoadConfig | None = None, sampling: SamplingConfig | None = None
    ) -> ModelSpec:
        """The spec `text` names; any text is one (an empty id fails when it is loaded)."""
        kind, _, rest = text.partition(":")
        knobs = {"load": load or LoadConfig(), "sampling": sampling or SamplingConfig()}
        if kind in ("replay", "openai") and rest:
            return cls(kind=kind, target=rest, **knobs)  # type: ignore[arg-type]
        return cls(kind="local", target=text, **knobs)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: object) -> object:
        """A plain `--model` string (a default, a test) is parsed as the command line does."""
        return dict(cls.parse(data)) if isinstance(data, str) else data

    def __str__(self) -> str:
        return self.target if self.kind == "local" else f"{self.kind}:{self.target}"

    @property
    def path(self) -> Path:
        """The replay file or folder."""
        return Path(self.target)

    @property
    def urls(self) -> list[str]:
        """The server or servers."""
        return self.target.split(",")

    def knobs(self) -> dict[str, object]:
        """Loading then sampling knobs, flat: run.json's `model_options`."""
        return {**self.load.model_dump(), **self.sampling.model_dump()}

    @classmethod
    def from_knobs(cls, text: str, knobs: dict[str, object]) -> ModelSpec:
        """The spec of `text` with the flat `knobs()` it was written with."""
        load, sampling = LoadConfig.model_validate(knobs), SamplingConfig.model_validate(knobs)
        return cls.parse(text, load, sampling)  # each config ignores the other's keys
