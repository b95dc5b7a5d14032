"""vdppl: variational dropout as an ordinary SVI problem in Pyro and NumPyro.

The backends live in :mod:`vdppl.pyro` (torch) and :mod:`vdppl.numpyro` (JAX); importing
``vdppl`` itself imports neither. :mod:`vdppl.kl` holds the maths both share.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
