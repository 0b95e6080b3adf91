"""Realistic secrets of every supported format, for the scrubber's tests and benchmarks."""

from __future__ import annotations

import base64
import json
import random
import string

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"
HEX = "0123456789abcdef"
UPPER_DIGITS = string.ascii_uppercase + string.digits
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    out = "".join(rng.choice(alphabet) for _ in range(n))
    # Real keys mix digits and letters; keep that property explicit.
    return (
        rng.choice(string.digits) + out[1:-1] + rng.choice(string.ascii_letters) if n > 2 else out
    )


def _jwt(rng: random.Random) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": _pick(rng, ALNUM, 12), "iat": rng.randrange(10**9)}).encode())
    return f"{header}.{payload}.{b64(rng.randbytes(32))}"


def _pem(rng: random.Random) -> str:
    body = base64.b64encode(rng.randbytes(180)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    kind = rng.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
    return (
        f"-----BEGIN {kind}PRIVATE KEY-----\n"
        + "\n".join(lines)
        + f"\n-----END {kind}PRIVATE KEY-----"
    )


#: rule name -> maker of one secret from a seeded generator.
MAKERS = {
    "openai_key": lambda r: "sk-proj-" + _pick(r, URLSAFE, 48),
    "openai_key_legacy": lambda r: "sk-" + _pick(r, ALNUM, 48),
    "anthropic_key": lambda r: "sk-ant-api03-" + _pick(r, URLSAFE, 93) + "AA",
    "openrouter_key": lambda r: "sk-or-v1-" + "".join(r.choice(HEX) for _ in range(64)),
    "xai_key": lambda r: "xai-" + _pick(r, ALNUM, 80),
    "groq_key": lambda r: "gsk_" + _pick(r, ALNUM, 52),
    "huggingface_token": lambda r: "hf_" + _pick(r, ALNUM, 34),
    "replicate_token": lambda r: "r8_" + _pick(r, ALNUM, 37),
    "perplexity_key": lambda r: "pplx-" + _pick(r, ALNUM, 48),
    "github_token": lambda r: (
        r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + _pick(r, ALNUM, 36)
    ),
    "github_pat": lambda r: "github_pat_" + _pick(r, ALNUM, 22) + "_" + _pick(r, ALNUM, 59),
    "gitlab_token": lambda r: "glpat-" + _pick(r, URLSAFE, 20),
    "slack_token": lambda r: (
        r.choice("abposr").join(["xox", "-"])
        + f"{r.randrange(10**11)}-{r.randrange(10**12)}-"
        + _pick(r, ALNUM, 24)
    ),
    "stripe_secret_key": lambda r: (
        r.choice(["sk_live_", "rk_live_", "sk_test_"]) + _pick(r, ALNUM, 24)
    ),
    "google_api_key": lambda r: "AIza" + _pick(r, URLSAFE, 35),
    "google_oauth_token": lambda r: "ya29." + _pick(r, URLSAFE, 80),
    "aws_access_key_id": lambda r: r.choice(["AKIA", "ASIA"]) + _pick(r, UPPER_DIGITS, 16).upper(),
    "npm_token": lambda r: "npm_" + _pick(r, ALNUM, 36),
    "pypi_token": lambda r: "pypi-AgEIcHlwaS5vcmc" + _pick(r, URLSAFE, 70),
    "sendgrid_key": lambda r: "SG." + _pick(r, URLSAFE, 22) + "." + _pick(r, URLSAFE, 43),
    "digitalocean_token": lambda r: "dop_v1_" + "".join(r.choice(HEX) for _ in range(64)),
    "databricks_token": lambda r: "dapi" + "".join(r.choice(HEX) for _ in range(32)),
    "vault_token": lambda r: "hvs." + _pick(r, URLSAFE, 90),
    "twilio_key": lambda r: "SK" + "".join(r.choice(HEX) for _ in range(32)),
    "shopify_token": lambda r: "shpat_" + "".join(r.choice(HEX) for _ in range(32)),
    "linear_key": lambda r: "lin_api_" + _pick(r, ALNUM, 40),
    "jwt": _jwt,
    "age_secret_key": lambda r: "AGE-SECRET-KEY-1" + "".join(r.choice(BECH32) for _ in range(58)),
}

#: Formats whose secret spans lines (not for single-line wrappers).
MULTILINE = {"pem_private_key": _pem}


def make(rule: str, seed: int) -> str:
    """One secret of the given format."""
    rng = random.Random(seed)
    maker = MAKERS.get(rule) or MULTILINE[rule]
    return maker(rng)


#: Text that must come back byte-identical.
SURVIVORS = [
    "550e8400-e29b-41d4-a716-446655440000",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    'integrity="sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC"',
    "image: nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT call_abc123XYZdef456 msg_01XFDUDYJgAACzvnptvVoYEL",
    "toolu_01A09q90qw90lq917835lq9 resp_67ccd2bed1ec8190b14f964abc054267 fp_44709d6fcb",
    "gpt-4o-2024-08-06 claude-3-5-sonnet-20241022 meta-llama/Llama-3.1-8B-Instruct",
    "The task-force set a risk-free plan; a desk-side chat about risk-averse ask-me-anything.",
    "Use sk-... as your key, or <your-api-key>, or ${OPENAI_API_KEY}.",
    "AWS docs use AKIAIOSFODNN7EXAMPLE and wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY as examples.",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUJ4u2sVsLxT0\n-----END CERTIFICATE-----",
    "stripe publishable pk_live_51H8sYQK2eZvKYlo2C8tX4Rk and pk_test_TYooMQauvdEDq54NiTphI7jx",
    '{"usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}, "max_tokens": 256}',
    "token count: 1234 tokens; the basic idea is simple; Bearer tokens are described in RFC 6750.",
    'api_key = os.environ["OPENAI_API_KEY"]\npassword = getpass()\ntoken = None',
    "password: <your-password>\napi_key: ${API_KEY}\nsecret: REDACTED\npassword = ********",
    "[0.0123, -0.98, 0.5, 1e-05] embedding vector",
    "https://example.com/path?page=2&sort=desc#top",
    "The secret: practice. The token: patience. Password: optional for guests.",
]
