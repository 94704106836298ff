"""edgeface: fine-tune EdgeFace face-recognition backbones on your own identities."""

__version__ = "0.1.0"
