"""Search spaces in `tune_spaces/*.yaml`: a short, validated form, and how a sampled point
becomes a project config.

    job: supervised            # supervised | uda | pretrain: which training job a trial runs
    metric: val_miou           # reported every epoch; ASHA and the search follow it
    mode: max
    params:                    # dotted project-config keys
      training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      training.batch_size: {type: int, low: 4, high: 16, step: 4}
      training.augmentation: {type: categorical, choices: [basic, extended]}

The same types as optuna's distributions (float with low/high/log/step, int with
low/high/log/step, categorical with choices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from microal.config import apply_overrides, format_validation_error
from microal.errors import ConfigError


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (as in optuna)")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log-scaled int range needs low > 0 and step 1")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str = "supervised"
    metric: str = "val_miou"
    mode: Literal["max", "min"] = "max"
    params: dict[str, Param] = Field(min_length=1)

    @field_validator("job")
    @classmethod
    def _known_job(cls, value: str) -> str:
        from microal.training.jobs import JOB_KINDS

        if value not in JOB_KINDS:
            raise ValueError(f"unknown job {value!r}; valid: {sorted(JOB_KINDS)}")
        return value


def _check_keys(space: SearchSpace, source: str) -> None:
    """Every key must name a config setting, and both ends of each range (every choice) must be
    values that setting accepts."""
    base = {"classes": ["a", "b"]}
    for key, param in space.params.items():
        values = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
        for value in values:
            try:
                apply_overrides(base, {key: value}, source=source)
            except ConfigError as error:
                message = str(error).replace(f"{source}: ", "")
                if "unknown key" in message:
                    raise ConfigError(f"{source}: params.{key}: not a config setting") from None
                raise ConfigError(f"{source}: params.{key}: {value!r} is refused: {message}") from None


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read search space ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    try:
        space = SearchSpace.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(format_validation_error(str(path), error)) from None
    _check_keys(space, str(path))
    return space


def to_optuna(space: SearchSpace) -> dict:
    """The space as optuna distributions (what OptunaSearch samples from)."""
    import optuna.distributions as d

    out = {}
    for key, param in space.params.items():
        if isinstance(param, FloatParam):
            out[key] = d.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntParam):
            out[key] = d.IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[key] = d.CategoricalDistribution(param.choices)
    return out
