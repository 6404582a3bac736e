"""The key holder: a party of its own that holds the CKKS secret key and decrypts only sums over
enough enrolled sites. It imports the protocol (``federation``) and the model layer, never another
party; the coordinator reaches it only over its HTTP API (``keyholder.service``)."""

from keyholder.key_holder import KeyHolder
from keyholder.state import KeyHolderState

__all__ = ["KeyHolder", "KeyHolderState"]
