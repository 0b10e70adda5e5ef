"""ahps: architecture-aware hyperparameter scaling (Chen et al., ICLR 2024; Wu et al., 2026)."""

__version__ = "0.1.0"
