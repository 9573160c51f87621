"""Crypto inventory: every use of quantum-vulnerable public-key cryptography, with file and line.

Finds RSA, ECDSA, ECDH, other elliptic-curve keys, DSA, finite-field Diffie-Hellman, Ed25519/Ed448 and
X25519/X448 (library imports and calls, JWT/TLS/SSH algorithm names, PEM headers, curve names) in Python
sources and configuration files. Symmetric primitives and hashes (AES, ChaCha20, HMAC, SHA-2, SHA-3)
and the post-quantum names (ML-DSA, SLH-DSA, ML-KEM) are not findings.

Python comments and docstrings are mentions, not uses, and are skipped; string literals in code are
scanned (``algorithm="RS256"`` is a use). A Python file that does not parse is scanned line by line,
comments included, so a syntax error cannot hide a finding. Config files skip whole-line comments.

A reviewed allowlist (``deploy/crypto-allowlist.yaml``: ``path`` glob, ``reason``, optional
``algorithms``) marks findings as allowed; allowed findings are reported but never block. Entries that
match nothing are reported so the list stays honest. Whether findings block is the phase's decision
(:attr:`Enforcement.audit_blocks`, true in phase 3).
"""

from __future__ import annotations

import ast
import fnmatch
import io
import os
import re
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.crypto.schedule import Enforcement
from governance.errors import ConfigError

__all__ = [
    "DEFAULT_ALLOWLIST",
    "AllowEntry",
    "Allowlist",
    "AuditReport",
    "Finding",
    "audit",
    "scan_text",
]

DEFAULT_ALLOWLIST = Path("deploy/crypto-allowlist.yaml")
PYTHON_SUFFIXES = frozenset({".py", ".pyi"})
CONFIG_SUFFIXES = frozenset(
    {
        ".yaml",
        ".yml",
        ".toml",
        ".json",
        ".ini",
        ".cfg",
        ".conf",
        ".properties",
        ".env",
        ".xml",
        ".pem",
        ".pub",
        ".crt",
        ".key",
    }
)
DEFAULT_EXCLUDES = (
    ".git",
    ".hg",
    ".local",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".import_linter_cache",
    ".hypothesis",
    "build",
    "dist",
    "*.egg-info",
)
_MAX_FILE_BYTES = 5 << 20
_NOT_ALNUM = r"(?<![A-Za-z0-9])"
# Keys, signatures and digests (base64/hex runs) can spell an algorithm name by chance; they are data.
_NEWLINE = re.compile(r"\r\n|\r|\n")
_ENCODED_RUN = re.compile(r"[A-Za-z0-9+/=_\-]{40,}")

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern, flags))
    for category, pattern, flags in (
        ("RSA", _NOT_ALNUM + r"RSA", 0),
        ("RSA", r"(?<![A-Za-z0-9_])rsa(?![A-Za-z])", 0),
        ("RSA", r"\b[RP]S(?:256|384|512)\b", 0),
        ("ECDSA", _NOT_ALNUM + r"ecdsa(?![A-Za-z])", re.IGNORECASE),
        ("ECDSA", r"\bES(?:256K?|384|512)\b", 0),
        ("ECDH", _NOT_ALNUM + r"ecdhe?(?![A-Za-z])", re.IGNORECASE),
        ("EC", r"\b(?:secp\d{3}[rk]1|prime256v1|nistp(?:256|384|521)|brainpoolP\d+r1)\b", re.IGNORECASE),
        ("EC", r"\bP-(?:256|384|521)\b|EllipticCurve|\bec\.(?:generate|derive)_private_key", 0),
        ("EC", r"asymmetric(?:\.ec\b|\s+import\s+(?:[\w\s,(]*[\s,(])?ec\b)", 0),
        ("DSA", r"(?<![A-Za-z0-9_\-])dsa(?![A-Za-z])|ssh-dss", re.IGNORECASE),
        ("DSA", r"(?<![A-Za-z0-9_\-])DSA(?:Private|Public|Parameter)", 0),
        ("DH", r"asymmetric(?:\.dh\b|\s+import\s+(?:[\w\s,(]*[\s,(])?dh\b)|\bdh\.generate_parameters", 0),
        ("DH", r"diffie.?hellman|" + _NOT_ALNUM + r"DHE(?![A-Za-z])|\bDHParameter", re.IGNORECASE),
        ("Ed25519", r"ed25519|ed448|eddsa", re.IGNORECASE),
        ("X25519", r"x25519|x448|curve25519", re.IGNORECASE),
    )
)
# One pass over a whole file first: most files mention no algorithm and skip the costly parse.
_ANY = re.compile(
    "|".join(f"(?i:{p.pattern})" if p.flags & re.IGNORECASE else f"(?:{p.pattern})" for _, p in _PATTERNS)
)


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the audited root, POSIX separators
    line: int
    algorithm: str
    snippet: str
    allowed_by: str | None = None  # the allowlist entry (path glob) that allows it
    allow_reason: str | None = None

    @property
    def allowed(self) -> bool:
        return self.allowed_by is not None


class AllowEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)
    reason: str = Field(min_length=10)
    algorithms: tuple[str, ...] | None = None

    def covers(self, path: str, algorithm: str) -> bool:
        if not fnmatch.fnmatchcase(path, self.path):
            return False
        return self.algorithms is None or algorithm in self.algorithms


class Allowlist(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[AllowEntry, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Allowlist:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read crypto allowlist {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"crypto allowlist {path} is not YAML: {exc}") from exc
        try:
            return cls.model_validate(document or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"crypto allowlist {path}: {where}: {first['msg']} (each entry needs path and a "
                "reason of 10+ characters; algorithms is optional)"
            ) from exc


@dataclass
class AuditReport:
    root: Path
    findings: list[Finding] = field(default_factory=list)
    files_scanned: int = 0
    unused_allow: list[AllowEntry] = field(default_factory=list)

    @property
    def unallowed(self) -> list[Finding]:
        return [f for f in self.findings if not f.allowed]

    def blocking(self, enforcement: Enforcement) -> list[Finding]:
        """Findings that fail the audit in this phase (none before phase 3)."""
        return self.unallowed if enforcement.audit_blocks else []


def _split_lines(text: str) -> list[str]:
    # The newlines tokenize and ast count (str.splitlines also splits on \f, \x1c, U+2028, ...).
    return _NEWLINE.split(text)


def _python_code_lines(text: str) -> list[str]:
    """Lines of Python ``text`` with comments and docstrings blanked; raw lines if it does not parse."""
    lines = _split_lines(text)
    try:
        tree = ast.parse(text)
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, tokenize.TokenError, ValueError):
        return lines
    for token in tokens:
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and node.end_lineno is not None
        ):
            for row in range(node.lineno, node.end_lineno + 1):
                lines[row - 1] = ""
    return lines


def _config_lines(text: str) -> list[str]:
    return ["" if line.lstrip().startswith(("#", ";", "//")) else line for line in _split_lines(text)]


def scan_text(text: str, python: bool) -> list[tuple[int, str, str]]:
    """``(line, algorithm, snippet)`` per quantum-vulnerable use in ``text`` (one per line and algorithm)."""
    if not _ANY.search(text):
        return []
    lines = _python_code_lines(text) if python else _config_lines(text)
    hits: list[tuple[int, str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = _ENCODED_RUN.sub(" ", raw)
        seen: set[str] = set()
        for category, pattern in _PATTERNS:
            if category not in seen and pattern.search(line):
                seen.add(category)
                hits.append((number, category, raw.strip()[:160]))
    return hits


def _excluded(name: str, excludes: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in excludes)


def _files(root: Path, excludes: Sequence[str]) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    # os.walk with in-place pruning: excluded trees (.git, .local data dirs) are never listed.
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d, excludes))
        for name in sorted(filenames):
            path = Path(directory) / name
            if _excluded(name, excludes) or path.is_symlink():
                continue
            if path.suffix in PYTHON_SUFFIXES or path.suffix in CONFIG_SUFFIXES:
                yield path


def audit(
    root: Path,
    allowlist: Allowlist | None = None,
    excludes: Iterable[str] = DEFAULT_EXCLUDES,
    skip: Iterable[Path] = (),
) -> AuditReport:
    """Scan ``root`` (a directory or one file) and classify each finding against ``allowlist``.

    ``skip`` lists files not to scan (the allowlist itself, which names the algorithms it allows).

    Findings are ordered by path, then line; the report is the same for the same tree (sorted walk).
    """
    if not root.exists():
        raise ConfigError(f"audit path {root} does not exist")
    allow = allowlist or Allowlist()
    excludes = tuple(excludes)
    base = root.parent if root.is_file() else root
    report = AuditReport(root=root)
    used: set[AllowEntry] = set()
    skipped = {p.resolve() for p in skip}
    for path in _files(root, excludes):
        if path.resolve() in skipped or path.stat().st_size > _MAX_FILE_BYTES:
            continue
        report.files_scanned += 1
        text = path.read_text(encoding="utf-8", errors="replace")
        relative = path.relative_to(base).as_posix()
        for line, category, snippet in scan_text(text, path.suffix in PYTHON_SUFFIXES):
            entry = next((e for e in allow.allow if e.covers(relative, category)), None)
            if entry is not None:
                used.add(entry)
            report.findings.append(
                Finding(
                    relative, line, category, snippet, entry.path if entry else None, entry.reason if entry else None
                )
            )
    report.unused_allow = [entry for entry in allow.allow if entry not in used]
    return report
