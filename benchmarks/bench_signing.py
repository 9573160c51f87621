"""Sign and verify throughput per algorithm, with key and signature sizes (issue 3 benchmark).

Run: ``python benchmarks/bench_signing.py [--runs 7] [--quick]``. Prints a table and writes
``benchmarks/results/signing.json``. Each figure is the median of ``--runs`` timed batches on one core
(pqcrypto holds the GIL, so one process = one core); the message is 1 KiB, the size of a typical
governance record. Also reported: ``sign_record``/``verify_record`` end to end (canonical JSON, base64,
trust-store checks), ML-KEM-768 encapsulation, and hybrid encryption of 1 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

from governance.crypto import (
    Context,
    KeyPolicy,
    Phase,
    Signer,
    TrustStore,
    algorithms,
    decrypt,
    encrypt,
    generate_key,
    sign_record,
    verify_record,
)
from governance.crypto.algorithms import Algorithm, spec

RESULTS = Path(__file__).resolve().parent / "results" / "signing.json"
MESSAGE = os.urandom(1024)
CONTEXT = Context.EVENT.value.encode()


def _rate(operation: Callable[[], object], batch: int, runs: int) -> float:
    """Median operations per second over ``runs`` batches of ``batch`` calls (one warm-up call first)."""
    operation()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def _signature_rows(runs: int, scale: float) -> list[dict[str, Any]]:
    rows = []
    plan = [
        (Algorithm.ML_DSA_65, 200, 400),
        (Algorithm.SLH_DSA_SHA2_128F, 10, 200),
        (Algorithm.CLASSICAL, 400, 400),  # classical reference point, dual mode only
    ]
    for algorithm, sign_batch, verify_batch in plan:
        public, secret = algorithms.keygen(algorithm)
        signature = algorithms.sign(algorithm, secret, MESSAGE, CONTEXT)
        facts = spec(algorithm)
        rows.append(
            {
                "algorithm": algorithm.value,
                "standard": facts.standard,
                "post_quantum": facts.post_quantum,
                "keygen_per_s": _rate(partial(algorithms.keygen, algorithm), max(3, int(sign_batch * scale)), runs),
                "sign_per_s": _rate(
                    partial(algorithms.sign, algorithm, secret, MESSAGE, CONTEXT), max(3, int(sign_batch * scale)), runs
                ),
                "verify_per_s": _rate(
                    partial(algorithms.verify, algorithm, public, MESSAGE, signature, CONTEXT),
                    max(3, int(verify_batch * scale)),
                    runs,
                ),
                "public_key_bytes": len(public),
                "secret_key_bytes": len(secret),
                "signature_bytes": len(signature),
            }
        )
    return rows


def _reference_row(runs: int, scale: float) -> dict[str, Any]:
    """pyca/cryptography's ML-DSA-65 (not used by shadowgate; interoperable, see test_crypto_algorithms)."""
    from cryptography.hazmat.primitives.asymmetric import mldsa as pyca_mldsa

    secret = pyca_mldsa.MLDSA65PrivateKey.generate()
    public = secret.public_key()
    signature = secret.sign(MESSAGE, CONTEXT)
    return {
        "algorithm": "ML-DSA-65 via cryptography " + version("cryptography"),
        "sign_per_s": _rate(partial(secret.sign, MESSAGE, CONTEXT), max(3, int(400 * scale)), runs),
        "verify_per_s": _rate(partial(public.verify, signature, MESSAGE, CONTEXT), max(3, int(400 * scale)), runs),
    }


def _record_row(runs: int, scale: float) -> dict[str, Any]:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    info, secret = generate_key(Algorithm.ML_DSA_65, now - timedelta(days=1), KeyPolicy())
    signer, store = Signer(info, secret), TrustStore([info])
    payload = {"event": "GateReady", "model": "fraud-v7", "checks": {f"check_{i}": 0.5 + i / 100 for i in range(30)}}
    record = sign_record(payload, Context.EVENT, signer, now)
    batch = max(3, int(200 * scale))
    return {
        "what": "sign_record / verify_record, ML-DSA-65, ~1 KiB payload",
        "sign_per_s": _rate(lambda: sign_record(payload, Context.EVENT, signer, now), batch, runs),
        "verify_per_s": _rate(lambda: verify_record(record, Context.EVENT, store, now, Phase.PQC_ONLY), batch, runs),
        "record_bytes": len(json.dumps(record)),
    }


def _kem_row(runs: int, scale: float) -> dict[str, Any]:
    from pqcrypto.kem import ml_kem_768

    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    public, secret = ml_kem_768.keygen()
    ciphertext, _ = ml_kem_768.encaps(public)
    info, secret_bytes = generate_key(Algorithm.ML_KEM_768, now - timedelta(days=1), KeyPolicy())
    mebibyte = os.urandom(1 << 20)
    envelope = encrypt(mebibyte, info, now)
    batch = max(3, int(400 * scale))
    hybrid_batch = max(3, int(20 * scale))
    return {
        "algorithm": "ML-KEM-768 + AES-256-GCM",
        "encaps_per_s": _rate(lambda: ml_kem_768.encaps(public), batch, runs),
        "decaps_per_s": _rate(lambda: ml_kem_768.decaps(secret, ciphertext), batch, runs),
        "encrypt_1mib_per_s": _rate(lambda: encrypt(mebibyte, info, now), hybrid_batch, runs),
        "decrypt_1mib_per_s": _rate(lambda: decrypt(envelope, secret_bytes), hybrid_batch, runs),
        "public_key_bytes": len(public),
        "ciphertext_bytes": len(ciphertext),
        "envelope_overhead_bytes": len(envelope) - len(mebibyte),
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed batches per figure (median reported)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                        help="batches 10x smaller (smoke test; also BENCH_QUICK=1)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    signatures = _signature_rows(args.runs, scale)
    record = _record_row(args.runs, scale)
    kem = _kem_row(args.runs, scale)
    reference = _reference_row(args.runs, scale)
    result = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "python": sys.version.split()[0],
            "pqcrypto": version("pqcrypto"),
            "cryptography": version("cryptography"),
        },
        "method": f"median of {args.runs} batches, one core, 1 KiB message" + (" (quick)" if args.quick else ""),
        "signatures": signatures,
        "records": record,
        "kem": kem,
        "reference_not_used": reference,
    }
    print(
        f"{'algorithm':<20} {'sign/s':>9} {'verify/s':>9} {'keygen/s':>9} {'public':>8} {'secret':>8} {'signature':>10}"
    )
    for row in signatures:
        print(
            f"{row['algorithm']:<20} {row['sign_per_s']:>9,.0f} {row['verify_per_s']:>9,.0f} "
            f"{row['keygen_per_s']:>9,.0f} "
            f"{row['public_key_bytes']:>7} B {row['secret_key_bytes']:>6} B {row['signature_bytes']:>8} B"
        )
    print(f"{record['what']}: sign {record['sign_per_s']:,.0f}/s, verify {record['verify_per_s']:,.0f}/s")
    print(
        f"{kem['algorithm']}: encaps {kem['encaps_per_s']:,.0f}/s, decaps {kem['decaps_per_s']:,.0f}/s, "
        f"1 MiB encrypt {kem['encrypt_1mib_per_s']:,.0f}/s, decrypt {kem['decrypt_1mib_per_s']:,.0f}/s, "
        f"overhead {kem['envelope_overhead_bytes']} B"
    )
    print(
        f"reference, not used: {reference['algorithm']}: sign {reference['sign_per_s']:,.0f}/s, "
        f"verify {reference['verify_per_s']:,.0f}/s"
    )
    machine = result["machine"]
    assert isinstance(machine, dict)
    print(f"{machine['cpu']}, {result['method']}, load average {machine['load_average_1m']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
