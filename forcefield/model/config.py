"""The `model` section of the config, with its defaults (docs/design.md, section "Architecture")."""

from __future__ import annotations

from typing import List, Literal, Optional

from ase.data import atomic_numbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forcefield.errors import InputError


class SwitchConfig(BaseModel):
    """Smooth-min isolation switch (docs/design.md, section "Isolation switch").

    Defaults: tau = 0.1 Å, r_on = 0.75 r_max, r_off = r_max. With them s_i = 1 exactly
    for any atom whose nearest neighbour is closer than about 0.7 r_max (3.5 Å at
    r_max = 5 Å): every atom of a molecule, a liquid or a bulk solid of the usual
    elements (for alkali metals raise r_max). An atom with a single neighbour at r has
    d_i = r - tau log u(r) >= r, which grows without bound as r -> r_max, so s_i reaches 0
    (E_i = E0 exactly) at about 0.9 r_max, before the neighbour leaves the cutoff, while
    the learned energy keeps most of the range of a dimer's binding curve.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="fade the energy of isolated atoms to E0")
    tau: float = Field(0.1, gt=0, description="softness of the minimum, Å")
    r_on: Optional[float] = Field(None, ge=0, description="d_i below which s_i = 1 (Å); default 0.75 r_max")
    r_off: Optional[float] = Field(None, gt=0, description="d_i above which s_i = 0 (Å); default r_max")


class ModelConfig(BaseModel):
    """The architecture. The numbers fitted to a training set (shift, scale, E0,
    avg_num_neighbors) are not here: forcefield.model.normalization."""

    model_config = ConfigDict(extra="forbid")
    species: List[str] = Field(..., min_length=1, description="element symbols, in model order")
    r_max: float = Field(5.0, gt=0, description="cutoff radius, Å")
    num_layers: int = Field(2, ge=1, description="interaction blocks (LAMMPS ghost shell = num_layers * r_max)")
    channels: int = Field(32, ge=1, description="multiplicity of every irrep in the hidden features")
    lmax: int = Field(2, ge=0, le=4, description="highest l of the hidden features and spherical harmonics")
    correlation: int = Field(
        3,
        ge=1,
        le=4,
        description="body order of the node update: products of up to "
        "this many aggregated messages (1 = two-body messages only)",
    )
    num_basis: int = Field(8, ge=1, description="Bessel radial basis functions")
    radial_hidden: int = Field(64, ge=1, description="width of the radial MLP")
    dtype: Literal["float32", "float64"] = Field("float32", description="float32 or float64 (whole model)")
    switch: SwitchConfig = Field(
        default_factory=SwitchConfig, description="smooth-min isolation switch: energy -> E0 for isolated atoms"
    )

    @field_validator("species")
    @classmethod
    def _known_elements(cls, v: List[str]) -> List[str]:
        for s in v:
            if s not in atomic_numbers or s == "X":
                raise ValueError(f"model.species: unknown element '{s}'")
        if len(set(v)) != len(v):
            raise ValueError(f"model.species: duplicate element in {v}")
        return v

    @model_validator(mode="after")
    def _check_maps(self) -> "ModelConfig":
        sw = self.switch
        r_on = sw.r_on if sw.r_on is not None else 0.75 * self.r_max
        r_off = sw.r_off if sw.r_off is not None else self.r_max
        if not r_off > r_on:
            raise ValueError(f"model.switch: r_off ({r_off}) must be larger than r_on ({r_on})")
        if r_off > self.r_max:
            raise ValueError(f"model.switch.r_off ({r_off}) must not exceed model.r_max ({self.r_max})")
        sw.r_on, sw.r_off = r_on, r_off
        return self


def parse_model_config(cfg: dict | ModelConfig) -> ModelConfig:
    """Validate a `model` section; pydantic errors become one-line InputErrors naming the key."""
    if isinstance(cfg, ModelConfig):
        return cfg
    from pydantic import ValidationError

    try:
        return ModelConfig.model_validate(cfg)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, prefix="model")) from None


def format_validation_error(exc, prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt?)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return f"{loc}: {msg}" if loc else msg
