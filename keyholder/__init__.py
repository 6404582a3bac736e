"""The key holder: a party of its own that holds the CKKS secret key and decrypts only sums over
enough sites. It imports the protocol (``federation``) and the model layer, never another party."""

from keyholder.key_holder import KeyHolder, start_key_holder_process

__all__ = ["KeyHolder", "start_key_holder_process"]
