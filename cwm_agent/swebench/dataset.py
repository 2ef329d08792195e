"""SWE-bench-style datasets: Hugging Face names or local files, validated row by row.

Rows come in three kinds, all loaded into one `Instance`:
- classic rows (SWE-bench, Lite, Verified as published on the hub): the test
  command and log parser come from the specs the `swebench` package ships;
- rows carrying `image` / `eval_script` / `log_parser` (the harness's 5.x format);
- custom rows with their own `image` and `test_cmd` (and `log_parser`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from cwm_agent.errors import first_line
from cwm_agent.swebench.errors import SwebenchError

ALIASES = {
    "verified": "SWE-bench/SWE-bench_Verified",
    "lite": "SWE-bench/SWE-bench_Lite",
    "full": "SWE-bench/SWE-bench",
}
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
INSTANCE_ID = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # a folder name too: no separator, no ".."


class Instance(BaseModel):
    """One task; fields the harness needs but we do not (hints, dates) are kept as extras."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    instance_id: str = Field(pattern=INSTANCE_ID)
    problem_statement: str = Field(min_length=1)
    repo: str = ""
    base_commit: str | None = None
    patch: str | None = Field(None, description="the gold patch, when the dataset has one")
    test_patch: str = ""
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    version: str | None = None
    difficulty: str | None = None
    image: str | None = Field(None, validation_alias=AliasChoices("image", "image_name"))
    test_cmd: str | None = None
    log_parser: str | None = None
    eval_script: str | None = None

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """Hub rows carry the test lists as JSON strings."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("problem_statement")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the problem statement is blank")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    def row(self) -> dict[str, Any]:
        """The row as the official harness expects it (lists as lists, extras kept)."""
        return self.model_dump()


def load_instances(name: str, split: str = "test") -> list[Instance]:
    """Every row of a local file or a hub dataset, validated; one clear error otherwise."""
    path = Path(name)
    if path.is_file():
        rows = _read_local(path)
    elif path.suffix in LOCAL_SUFFIXES or name.startswith((".", "/", "~")):
        raise SwebenchError(f"dataset file {name} not found")
    else:
        rows = _read_hub(ALIASES.get(name.lower(), name), split)
    instances: list[Instance] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise SwebenchError(f"dataset {name}: row {number} is not an object")
        try:
            instance = Instance.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "row"
            label = row.get("instance_id") or f"row {number}"
            raise SwebenchError(
                f"dataset {name}: {label}: invalid {where}: {first['msg']}"
            ) from None
        if instance.instance_id in seen:
            raise SwebenchError(f"dataset {name}: instance {instance.instance_id} appears twice")
        seen.add(instance.instance_id)
        instances.append(instance)
    if not instances:
        raise SwebenchError(f"dataset {name} has no rows")
    return instances


def select(
    instances: list[Instance], ids: Iterable[str] | None = None, span: str | None = None
) -> list[Instance]:
    """The chosen instances in dataset order: by id, or a Python-style `A:B` slice."""
    if ids is not None:
        wanted = [i.strip() for i in ids if i.strip()]
        known = {instance.instance_id for instance in instances}
        missing = [i for i in wanted if i not in known]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise SwebenchError(f"not in the dataset: {', '.join(missing[:3])}{more}")
        chosen = set(wanted)
        instances = [instance for instance in instances if instance.instance_id in chosen]
    if span is not None:
        start, sep, stop = span.partition(":")
        try:
            bounds = [int(part) if part.strip() else None for part in (start, stop)]
        except ValueError:
            bounds = []
        if not sep or len(bounds) != 2:
            raise SwebenchError(f"--slice {span!r}: expected A:B, e.g. 0:50")
        instances = instances[bounds[0] : bounds[1]]
    if not instances:
        raise SwebenchError("the selection is empty: check --instances / --slice")
    return instances


def read_ids(path: Path) -> list[str]:
    """An `--instances-file`: one id per line, blank lines and `#` comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SwebenchError(f"--instances-file {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _read_local(path: Path) -> list[Any]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet

            return list(pyarrow.parquet.read_table(path).to_pylist())
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return _jsonl_rows(path, text)
        data = json.loads(text)
    except SwebenchError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SwebenchError(f"cannot read dataset {path}: {first_line(exc)}") from None
    except ImportError:
        raise SwebenchError(
            "reading parquet needs pyarrow: pip install 'cwm-agent[swebench]'"
        ) from None
    except Exception as exc:  # pyarrow's own errors for a corrupt file
        raise SwebenchError(f"cannot read dataset {path}: {first_line(exc)}") from None
    if isinstance(data, dict):  # {instance_id: row}
        data = list(data.values())
    if not isinstance(data, list):
        raise SwebenchError(f"dataset {path} must hold a list of rows")
    return data


def _jsonl_rows(path: Path, text: str) -> list[Any]:
    """One row per line; a malformed one is named by its line in the file."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SwebenchError(
                    f"cannot read dataset {path}: line {number} is not JSON "
                    f"({exc.msg} at column {exc.colno})"
                ) from None
    return rows


def _read_hub(name: str, split: str) -> list[Any]:
    try:
        import datasets
    except ImportError:
        raise SwebenchError(
            "loading hub datasets needs `datasets`: pip install 'cwm-agent[swebench]'"
        ) from None
    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as exc:  # the hub client raises many kinds; all mean "cannot load"
        raise SwebenchError(
            f"cannot load dataset {name!r} (split {split!r}) from the Hugging Face hub: "
            f"{first_line(exc)}; check the name and the network, or pass a local "
            ".json/.jsonl/.parquet file"
        ) from None
