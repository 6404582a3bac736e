"""The key holder's BFV contexts for packed model updates (``federation.packing``), beside its CKKS one.

Files in the state folder: ``packed-secret-context.bin`` (0600, the only copy of its secret keys) and
``packed-public-context.bin``, each holding both rings (``PackedContext.serialize``). Made with the
rest at ``keyholder init``; a key holder made before packing existed gets them the first time it
starts (under the folder's lock, never overwritten). One made before the small ring existed keeps its
lone large ring, and every chunk of its packed sums goes in that ring.
"""

from __future__ import annotations

from federation.identity import context_signature, write_secret
from federation.packing import PackedContext, load_packed_context, make_packed_context
from keyholder.state import KeyHolderState

__all__ = ["ensure_packed", "packed_public_context", "packed_secret_context", "packed_signature"]

_SECRET = "packed-secret-context.bin"
_PUBLIC = "packed-public-context.bin"


def ensure_packed(state: KeyHolderState) -> bool:
    """Make the packed context if the folder has none; return whether it made it."""
    home = state.require().home
    with state.exclusive():
        if (home / _SECRET).is_file():
            return False
        context = make_packed_context()
        public, secret = context.serialize(secret=False), context.serialize(secret=True)
        (home / _PUBLIC).write_bytes(public)
        write_secret(home / _SECRET, secret)  # written last: its presence says the pair is complete
        state.ledger.append(actor="keyholder", action="init-packed", scheme="bfv",
                            poly_modulus_degrees=[8192, 4096])
        return True


def packed_secret_context(state: KeyHolderState) -> PackedContext:
    return load_packed_context((state.require().home / _SECRET).read_bytes(), secret=True)


def packed_public_context(state: KeyHolderState) -> bytes:
    return (state.require().home / _PUBLIC).read_bytes()


def packed_signature(state: KeyHolderState) -> bytes:
    """Ed25519 over sha256(packed public context): nodes refuse a packed context it does not sign."""
    return context_signature(state.signing_key(), packed_public_context(state))
