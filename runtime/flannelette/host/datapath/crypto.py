"""WireGuard's primitives from what every host has: X25519 and ChaCha20-Poly1305 from the system's libcrypto
(OpenSSL 1.1.1 or newer, through ctypes), BLAKE2s and HMAC from hashlib. No compiled code of our own.

Nothing here keeps or logs a key beyond the object it was given to. The
module needs nothing but the standard library, so the deploy runs it as it is
on a host that has no flannelette yet, to make the host's key there (`keygen`).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import os
import struct
from typing import Optional, Tuple


KEY_LEN = 32
TAG_LEN = 16
NONCE_LEN = 12
EVP_PKEY_X25519 = 1034
EVP_CTRL_AEAD_SET_IVLEN, EVP_CTRL_AEAD_GET_TAG, EVP_CTRL_AEAD_SET_TAG = 0x9, 0x10, 0x11
TAI64_EPOCH = 0x400000000000000A  # 2^62 + 10: TAI64 of the Unix epoch, leap seconds as WireGuard counts them


class Unavailable(Exception):
    """This host's libcrypto can't do what WireGuard needs; the message says what is missing."""


class _LibCrypto:
    """The few libcrypto functions used, typed once."""

    def __init__(self):
        name = ctypes.util.find_library("crypto")
        candidates = [name] if name else []
        candidates += ["libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"]
        lib = None
        for candidate in candidates:
            try:
                lib = ctypes.CDLL(candidate)
                break
            except OSError:
                continue
        if lib is None:
            raise Unavailable("no libcrypto found (install OpenSSL 1.1.1 or newer: libssl3 or libssl1.1)")
        self.lib = lib
        p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        self._type("EVP_chacha20_poly1305", p, [])
        self._type("EVP_CIPHER_CTX_new", p, [])
        self._type("EVP_CIPHER_CTX_free", None, [p])
        self._type("EVP_CIPHER_CTX_ctrl", i, [p, i, i, p])
        for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
            self._type(name, i, [p, p, p, p, p])
        for name in ("EVP_EncryptUpdate", "EVP_DecryptUpdate"):
            self._type(name, i, [p, p, ctypes.POINTER(i), p, i])
        for name in ("EVP_EncryptFinal_ex", "EVP_DecryptFinal_ex"):
            self._type(name, i, [p, p, ctypes.POINTER(i)])
        self._type("EVP_PKEY_new_raw_private_key", p, [i, p, ctypes.c_char_p, s])
        self._type("EVP_PKEY_new_raw_public_key", p, [i, p, ctypes.c_char_p, s])
        self._type("EVP_PKEY_get_raw_public_key", i, [p, ctypes.c_char_p, ctypes.POINTER(s)])
        self._type("EVP_PKEY_free", None, [p])
        self._type("EVP_PKEY_CTX_new", p, [p, p])
        self._type("EVP_PKEY_CTX_free", None, [p])
        self._type("EVP_PKEY_derive_init", i, [p])
        self._type("EVP_PKEY_derive_set_peer", i, [p, p])
        self._type("EVP_PKEY_derive", i, [p, ctypes.c_char_p, ctypes.POINTER(s)])
        if not self.EVP_chacha20_poly1305():
            raise Unavailable("this libcrypto has no ChaCha20-Poly1305 (OpenSSL 1.1.0 or newer needed)")
        self.chacha20_poly1305 = self.EVP_chacha20_poly1305()

    def _type(self, name: str, restype, argtypes) -> None:
        try:
            function = getattr(self.lib, name)
        except AttributeError:
            raise Unavailable(f"this libcrypto has no {name} (OpenSSL 1.1.1 or newer needed)") from None
        function.restype, function.argtypes = restype, argtypes
        setattr(self, name, function)


_lib: Optional[_LibCrypto] = None


def libcrypto() -> _LibCrypto:
    global _lib
    if _lib is None:
        _lib = _LibCrypto()
    return _lib


def check() -> None:
    """Raise Unavailable, saying why, when this host can't encrypt; try every primitive once."""
    private = generate_private()
    if shared(private, public(generate_private())) is None:
        raise Unavailable("X25519 gave an all-zero result")
    box = AEAD(bytes(KEY_LEN))
    if box.open(1, box.seal(1, b"probe", b"a"), b"a") != b"probe":
        raise Unavailable("ChaCha20-Poly1305 does not open what it sealed")


# -- X25519 ------------------------------------------------------------------------


def generate_private() -> bytes:
    """A new private key, clamped as `wg genkey` does."""
    key = bytearray(os.urandom(KEY_LEN))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public(private: bytes) -> bytes:
    lib = libcrypto()
    pkey = lib.EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, None, private, KEY_LEN)
    if not pkey:
        raise Unavailable("this libcrypto has no X25519 (OpenSSL 1.1.1 or newer needed)")
    try:
        out, size = ctypes.create_string_buffer(KEY_LEN), ctypes.c_size_t(KEY_LEN)
        if lib.EVP_PKEY_get_raw_public_key(pkey, out, ctypes.byref(size)) != 1:
            raise Unavailable("X25519: can't read a public key back")
        return out.raw
    finally:
        lib.EVP_PKEY_free(pkey)


def shared(private: bytes, peer_public: bytes) -> Optional[bytes]:
    """X25519(private, peer_public); None when the peer's key is one of the points that give all zeros."""
    lib = libcrypto()
    own = lib.EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, None, private, KEY_LEN)
    peer = lib.EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, None, bytes(peer_public), KEY_LEN)
    ctx = lib.EVP_PKEY_CTX_new(own, None) if own else None
    try:
        if not (own and peer and ctx) or lib.EVP_PKEY_derive_init(ctx) != 1 or lib.EVP_PKEY_derive_set_peer(ctx, peer) != 1:
            return None
        out, size = ctypes.create_string_buffer(KEY_LEN), ctypes.c_size_t(KEY_LEN)
        if lib.EVP_PKEY_derive(ctx, out, ctypes.byref(size)) != 1:
            return None  # OpenSSL refuses an all-zero shared secret
        result = out.raw
        return None if result == bytes(KEY_LEN) else result
    finally:
        if ctx:
            lib.EVP_PKEY_CTX_free(ctx)
        for key in (own, peer):
            if key:
                lib.EVP_PKEY_free(key)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def keygen(path: str) -> str:
    """This host's public key, base64; the private key in `path` made first (0600, whole) when there is none."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        temp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (encode_key(generate_private()) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # never over a key that appeared meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
    with open(path, "rb") as f:
        return encode_key(public(base64.b64decode(f.read().strip())))


# -- ChaCha20-Poly1305 ------------------------------------------------------------


def nonce(counter: int) -> bytes:
    """WireGuard's 96-bit nonce: 32 zero bits, then the counter, little-endian."""
    return b"\0\0\0\0" + struct.pack("<Q", counter)


class AEAD:
    """ChaCha20-Poly1305 under one key (RFC 8439), its cipher context set up once.

    `seal` and `open` take bytes-like objects; `seal_into` and `open_from`
    take addresses, for the data path, which keeps its buffers' addresses.
    """

    def __init__(self, key: bytes):
        lib = self._lib = libcrypto()
        self._enc = lib.EVP_CIPHER_CTX_new()
        self._dec = lib.EVP_CIPHER_CTX_new()
        if not (self._enc and self._dec):
            raise Unavailable("can't make a cipher context")
        key = bytes(key)
        if lib.EVP_EncryptInit_ex(self._enc, lib.chacha20_poly1305, None, key, None) != 1 \
                or lib.EVP_DecryptInit_ex(self._dec, lib.chacha20_poly1305, None, key, None) != 1:
            raise Unavailable("ChaCha20-Poly1305 refused a key")
        self._n = ctypes.c_int(0)
        self._pn = ctypes.byref(self._n)
        self._tag = ctypes.create_string_buffer(TAG_LEN)
        self._nonce = ctypes.create_string_buffer(NONCE_LEN)
        self._nonce_address = ctypes.addressof(self._nonce)

    def __del__(self):
        lib = getattr(self, "_lib", None)
        if lib is not None:
            for ctx in (getattr(self, "_enc", None), getattr(self, "_dec", None)):
                if ctx:
                    lib.EVP_CIPHER_CTX_free(ctx)

    def _set_nonce(self, counter: int) -> None:
        struct.pack_into("<Q", self._nonce, 4, counter)

    def seal_into(self, counter: int, source: int, length: int, target: int, aad: bytes = b"", pad: int = 0) -> int:
        """Encrypt `length` bytes at address `source`, then `pad` zero bytes, to `target`, the tag behind them; the
        bytes written."""
        lib, ctx, pn = self._lib, self._enc, self._pn
        self._set_nonce(counter)
        lib.EVP_EncryptInit_ex(ctx, None, None, None, self._nonce_address)
        if aad:
            lib.EVP_EncryptUpdate(ctx, None, pn, aad, len(aad))
        if length:
            lib.EVP_EncryptUpdate(ctx, target, pn, source, length)
        if pad:
            lib.EVP_EncryptUpdate(ctx, target + length, pn, _zeros(pad), pad)
            length += pad
        lib.EVP_EncryptFinal_ex(ctx, None, pn)
        lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, target + length)
        return length + TAG_LEN

    def open_from(self, counter: int, source: int, length: int, target: int, aad: bytes = b"") -> int:
        """Decrypt and check `length` bytes (the tag last) at `source` into `target`; the plaintext's length, or -1."""
        if length < TAG_LEN:
            return -1
        lib, ctx, pn = self._lib, self._dec, self._pn
        self._set_nonce(counter)
        lib.EVP_DecryptInit_ex(ctx, None, None, None, self._nonce_address)
        body = length - TAG_LEN
        lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, source + body)
        if aad:
            lib.EVP_DecryptUpdate(ctx, None, pn, aad, len(aad))
        if body:
            lib.EVP_DecryptUpdate(ctx, target, pn, source, body)
        if lib.EVP_DecryptFinal_ex(ctx, None, pn) != 1:
            return -1
        return body

    def seal(self, counter: int, plaintext, aad: bytes = b"") -> bytes:
        source = ctypes.create_string_buffer(bytes(plaintext), len(plaintext) or 1)
        out = ctypes.create_string_buffer(len(plaintext) + TAG_LEN)
        n = self.seal_into(counter, ctypes.addressof(source), len(plaintext), ctypes.addressof(out), bytes(aad))
        return out.raw[:n]

    def open(self, counter: int, ciphertext, aad: bytes = b"") -> Optional[bytes]:
        source = ctypes.create_string_buffer(bytes(ciphertext), len(ciphertext) or 1)
        out = ctypes.create_string_buffer(max(1, len(ciphertext)))
        n = self.open_from(counter, ctypes.addressof(source), len(ciphertext), ctypes.addressof(out), bytes(aad))
        return None if n < 0 else out.raw[:n]


_ZEROS = [ctypes.create_string_buffer(0)]


def _zeros(n: int):
    """A buffer of at least `n` zero bytes, kept for the next caller (nothing ever writes into it)."""
    if len(_ZEROS[0]) < n:
        _ZEROS[0] = ctypes.create_string_buffer(max(n, 1 << 16))
    return _ZEROS[0]


def aead_seal(key: bytes, counter: int, plaintext, aad: bytes = b"") -> bytes:
    return AEAD(key).seal(counter, plaintext, aad)


def aead_open(key: bytes, counter: int, ciphertext, aad: bytes = b"") -> Optional[bytes]:
    return AEAD(key).open(counter, ciphertext, aad)


# -- XChaCha20-Poly1305 (cookies) ----------------------------------------------------


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha): a subkey from a key and 16 bytes of nonce; once per cookie."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574] + list(struct.unpack("<8I", key)) \
        + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                           (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            state[a] = (state[a] + state[b]) & 0xFFFFFFFF
            state[d] = _rotl(state[d] ^ state[a], 16)
            state[c] = (state[c] + state[d]) & 0xFFFFFFFF
            state[b] = _rotl(state[b] ^ state[c], 12)
            state[a] = (state[a] + state[b]) & 0xFFFFFFFF
            state[d] = _rotl(state[d] ^ state[a], 8)
            state[c] = (state[c] + state[d]) & 0xFFFFFFFF
            state[b] = _rotl(state[b] ^ state[c], 7)
    return struct.pack("<8I", *(state[0:4] + state[12:16]))


def xaead_seal(key: bytes, nonce24: bytes, plaintext, aad: bytes = b"") -> bytes:
    return AEAD(hchacha20(key, nonce24[:16])).seal(struct.unpack("<Q", nonce24[16:])[0], plaintext, aad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext, aad: bytes = b"") -> Optional[bytes]:
    return AEAD(hchacha20(key, nonce24[:16])).open(struct.unpack("<Q", nonce24[16:])[0], ciphertext, aad)


# -- BLAKE2s, as WireGuard uses it ----------------------------------------------------


def hash(data: bytes) -> bytes:  # noqa: A001  (the whitepaper's name)
    return hashlib.blake2s(data, digest_size=32).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf(key: bytes, data: bytes, n: int) -> Tuple[bytes, ...]:
    """KDF_n of the whitepaper: HKDF with HMAC-BLAKE2s, n outputs of 32 bytes."""
    prk = hmac_hash(key, data)
    out, previous = [], b""
    for i in range(1, n + 1):
        previous = hmac_hash(prk, previous + bytes((i,)))
        out.append(previous)
    return tuple(out)


def tai64n(unix: float) -> bytes:
    seconds = int(unix)
    return struct.pack(">QI", TAI64_EPOCH + seconds, int((unix - seconds) * 1e9))


def equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
