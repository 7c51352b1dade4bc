"""forcefield: an E(3)-equivariant machine-learned interatomic potential."""

__version__ = "0.1.0"

from forcefield.calculator import ForceFieldCalculator  # noqa: E402
from forcefield.model.forcefield import ForceField  # noqa: E402

__all__ = ["ForceField", "ForceFieldCalculator", "__version__"]
