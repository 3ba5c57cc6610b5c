"""Minting test tokens for the benchmarks, with Python's standard library
for HS256 and the `openssl` command for ES256 and EdDSA keys and signatures,
the way an operator without a JWT library could do it."""

import base64
import hashlib
import hmac
import json
import os
import subprocess


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signing_input(alg, claims):
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}"


def hs256(secret, claims):
    data = signing_input("HS256", claims)
    sig = hmac.new(secret, data.encode(), hashlib.sha256).digest()
    return f"{data}.{b64url(sig)}"


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def make_keys(directory):
    """An HS256 secret, a P-256 and an Ed25519 key pair, as files."""
    paths = {name: os.path.join(directory, name) for name in
             ["secret", "ec.pem", "ec.pub.pem", "ed.pem", "ed.pub.pem"]}
    with open(paths["secret"], "wb") as f:
        f.write(os.urandom(32).hex().encode() + b"\n")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", paths["ec.pem"])
    openssl("ec", "-in", paths["ec.pem"], "-pubout", "-out", paths["ec.pub.pem"])
    openssl("genpkey", "-algorithm", "ed25519", "-out", paths["ed.pem"])
    openssl("pkey", "-in", paths["ed.pem"], "-pubout", "-out", paths["ed.pub.pem"])
    return paths


def secret_of(paths):
    with open(paths["secret"], "rb") as f:
        return f.read().rstrip(b"\n")


def es256(key_pem, claims):
    data = signing_input("ES256", claims)
    der = openssl("dgst", "-sha256", "-sign", key_pem, data=data.encode())
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r || s, 32 bytes each.
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return f"{data}.{b64url(out)}"


def eddsa(key_pem, claims):
    data = signing_input("EdDSA", claims)
    # Ed25519 signs in one shot, and openssl 3.0 needs a file to size it.
    message = key_pem + ".msg"
    with open(message, "w") as f:
        f.write(data)
    sig = openssl("pkeyutl", "-sign", "-inkey", key_pem, "-rawin", "-in", message)
    os.unlink(message)
    return f"{data}.{b64url(sig)}"
