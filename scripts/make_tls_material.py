"""Make throw-away TLS and SuperNode-authentication material for a loopback Flower federation.

    python scripts/make_tls_material.py OUT_DIR [--supernode NAME ...]

writes into OUT_DIR (for testing and trials only; never commit what it writes):

- ``ca.crt``, ``ca.key``: a self-signed CA;
- ``server.pem``, ``server.key``: the SuperLink's certificate, signed by the CA, for
  ``localhost`` and ``127.0.0.1`` (``--san`` adds further DNS names or IP addresses);
- per ``--supernode NAME``: ``NAME`` (an ECDSA P-384 private key in OpenSSH format, what
  ``flower-supernode --auth-supernode-private-key`` reads) and ``NAME.pub`` (its public key in
  OpenSSH format, what ``flwr supernode register`` reads).

Private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_ca", "make_server_cert", "make_supernode_keys"]


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(out: Path, *, days: int = 2) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fenji test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(key), private=True)
    return cert, key


def make_server_cert(out: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                     sans: list[str], *, days: int = 2) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _key_pem(key), private=True)


def make_supernode_keys(out: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write(out / name, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()), private=True)
    public = _write(out / f"{name}.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                      serialization.PublicFormat.OpenSSH)
                    + f" {name}\n".encode())
    return private, public


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--san", action="append", default=[], help="extra DNS name or IP for the server certificate")
    parser.add_argument("--supernode", action="append", default=[], help="make an EC key pair NAME / NAME.pub")
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(out)
    make_server_cert(out, ca_cert, ca_key, ["localhost", "127.0.0.1", *args.san])
    for name in args.supernode:
        make_supernode_keys(out, name)
    print(f"wrote ca.crt, server.pem, server.key and {len(args.supernode)} SuperNode key pair(s) to {out}")


if __name__ == "__main__":
    main()
