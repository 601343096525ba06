"""unlearn_tool: make a trained PyTorch classifier forget part of its training data.

The library never imports the CLI framework; `cli/` is a thin layer over it.
Importing this package does not import torch (so `unlearn --help` and request
validation stay instant); modules that need torch import it themselves.
"""

__version__ = "0.1.0"
