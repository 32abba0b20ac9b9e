#!/usr/bin/env python3
"""End-to-end checks of resbm-train as a user runs it: flags, errors, convergence, resume.

usage: train_cli.py BINARY WORKDIR CHECK   (CHECK is one of the functions named check_*)
"""
import json
import os
import shutil
import subprocess
import sys

BIN, WORK, CHECK = sys.argv[1], sys.argv[2], sys.argv[3]
LAUNCH = os.path.join(os.path.dirname(BIN), "resbm-launch")
TINY = ["--d-model", "32", "--layers", "2", "--heads", "2", "--seq", "32", "--batch", "4",
        "--threads", "2", "--eval-batches", "2"]


def run(*args, expect_rc=0, binary=None):
    binary = binary or BIN
    p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=1200)
    if p.returncode != expect_rc:
        sys.exit(f"{BIN} {' '.join(args)}: exit {p.returncode}, expected {expect_rc}\n"
                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def result(p):
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if len(lines) != 1:
        sys.exit(f"expected one RESULT line, got {len(lines)}:\n{p.stdout}")
    return json.loads(lines[0][len("RESULT "):])


def losses(path):
    with open(path) as f:
        return {r["step"]: r["train_loss"] for r in map(json.loads, f) if "train_loss" in r}


def fresh(name):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def check_help():
    out = run("--help").stdout
    for flag in ["--data", "--tokenizer", "--d-model", "--layers", "--heads", "--seq", "--batch", "--steps",
                 "--lr", "--optimizer", "--seed", "--threads", "--eval-every", "--metrics", "--save", "--resume"]:
        assert flag in out, f"--help does not mention {flag}:\n{out}"


def check_errors():
    cases = [
        (["--no-such-flag"], "unknown flag --no-such-flag"),
        (["--steps", "abc"], "--steps got 'abc', not a number"),
        (["--data", os.path.join(WORK, "missing.txt")], "missing.txt"),
        (["--d-model", "130", "--heads", "4"], "d_model 130 is not divisible by n_heads 4"),
        (["--optimizer", "sgd"], "unknown optimizer 'sgd'"),
        (["--tokenizer", "bpe"], "unknown tokenizer 'bpe'"),
        (["--resume", os.path.join(WORK, "nowhere")], "--resume"),
    ]
    for args, message in cases:
        p = run(*args, "--steps" if "--steps" not in args else "--seed", "1", expect_rc=1)
        assert message in p.stderr, f"{args}: stderr lacks '{message}':\n{p.stderr}"
        assert "fix:" in p.stderr, f"{args}: the error does not say how to fix it:\n{p.stderr}"


def check_result_fields():
    r = result(run(*TINY, "--steps", "3"))
    for key in ["val_loss", "train_loss", "tokens_per_s", "steps", "params", "d_model", "n_layers",
                "n_heads", "seq_len", "batch", "optimizer"]:
        assert key in r, f"RESULT lacks {key}: {r}"
    assert r["steps"] == 3 and r["d_model"] == 32 and r["tokens_per_s"] > 0


def check_resume():
    """A run stopped at step 10 and resumed gives the same losses as one never stopped."""
    for opt in ["muon", "adamw"]:
        d = fresh("resume-" + opt)
        common = [*TINY, "--optimizer", opt, "--steps", "20", "--warmup", "5"]
        run(*common, "--metrics", f"{d}/whole.jsonl")
        run(*common, "--save", f"{d}/ckpt", "--save-every", "5", "--stop-after", "10",
            "--metrics", f"{d}/first.jsonl")
        run(*common, "--resume", f"{d}/ckpt", "--save", f"{d}/ckpt", "--metrics", f"{d}/second.jsonl")
        whole, first, second = (losses(f"{d}/{n}.jsonl") for n in ["whole", "first", "second"])
        assert sorted(first) == list(range(1, 11)), f"stopped run logged steps {sorted(first)}"
        assert sorted(second) == list(range(11, 21)), f"resumed run logged steps {sorted(second)}"
        for step in range(1, 21):
            got = first.get(step, second.get(step))
            assert got == whole[step], f"{opt}: step {step} loss {got} != uninterrupted {whole[step]}"
        # A checkpoint from another configuration is refused with the field named.
        p = run(*TINY, "--d-model", "64", "--optimizer", opt, "--steps", "20", "--resume", f"{d}/ckpt",
                expect_rc=1)
        assert "d_model" in p.stderr and "fix:" in p.stderr, p.stderr


def check_pipeline_modes():
    """Stages as threads and as processes over TCP give identical losses and weights; both
    equal the unpartitioned model to rounding (fp32 wire)."""
    import filecmp
    whole = fresh("pipe-whole")
    run(*TINY, "--layers", "4", "--steps", "4", "--codec", "fp32", "--metrics", f"{whole}/m.jsonl")
    base = losses(f"{whole}/m.jsonl")
    for S in [2, 4]:
        for M in [1, 4]:
            for sched in ["gpipe", "1f1b"]:
                tag = f"S{S}-M{M}-{sched}"
                a, b = fresh("pipe-threads-" + tag), fresh("pipe-tcp-" + tag)
                flags = [*TINY, "--layers", "4", "--steps", "4", "--codec", "fp32", "--stages", str(S),
                         "--micro-batches", str(M), "--schedule", sched, "--threads", "1"]
                run(*flags, "--metrics", f"{a}/m.jsonl", "--save", f"{a}/ckpt")
                r = result(run(*flags[:-2], "--metrics", f"{b}/m.jsonl", "--save", f"{b}/ckpt", binary=LAUNCH))
                assert r["transport"] == "tcp" and len(r["per_stage"]) == S, r
                la, lb = losses(f"{a}/m.jsonl"), losses(f"{b}/m.jsonl")
                assert la == lb, f"{tag}: threads {la} != tcp {lb}"
                for k in range(S):
                    name = f"stage-{k}.step-00000004.params.safetensors"
                    fa, fb = f"{a}/ckpt/{name}", f"{b}/ckpt/{name}"
                    assert filecmp.cmp(fa, fb, shallow=False), f"{tag}: stage {k} weights differ"
                for step, loss in base.items():
                    assert abs(la[step] - loss) <= 1e-4 * abs(loss), f"{tag}: step {step} {la[step]} vs whole {loss}"


def check_launch_errors():
    """A stage that cannot start takes the run down with a message naming it; no hang."""
    p = run("--stages", "2", *TINY, "--d-model", "30", expect_rc=1, binary=LAUNCH)
    assert "stage 0" in p.stderr and "exited with 1" in p.stderr, p.stderr
    assert "d_model 30 is not divisible by n_heads" in p.stderr or "odd" in p.stderr, p.stderr


def check_kill_resume():
    """Kill one stage process mid-run: the others stop within their timeout naming the lost
    stage and step; resuming from the checkpoints gives the uninterrupted run's losses."""
    import signal
    import time
    d = fresh("kill")
    flags = [*TINY, "--layers", "4", "--steps", "30", "--warmup", "5", "--stages", "4", "--micro-batches", "2",
             "--threads", "1", "--timeout", "10"]
    run(*flags, "--metrics", f"{d}/whole.jsonl", binary=LAUNCH)
    whole = losses(f"{d}/whole.jsonl")

    # Slow every link a little so that the run is still going when the kill lands.
    slow = ["--link-latency-ms", "20"]
    p = subprocess.Popen([LAUNCH, *flags, *slow, "--save", f"{d}/ckpt", "--save-every", "4",
                          "--metrics", f"{d}/first.jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if os.path.exists(f"{d}/first.jsonl") and len(open(f"{d}/first.jsonl").read().splitlines()) >= 10:
            break
        time.sleep(0.05)
    victim = subprocess.run(["pgrep", "-f", "--", f"--stage 2 .*{d}/ckpt"], capture_output=True, text=True).stdout.split()
    assert len(victim) == 1, f"expected one stage-2 process, found {victim}"
    killed_at = time.time()
    os.kill(int(victim[0]), signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    took = time.time() - killed_at
    assert p.returncode != 0, "the launcher reported success after a stage was killed"
    assert "stage 2 was killed by signal 9" in err, err
    for k in [1, 3]:
        assert f"stage {k} lost stage 2 at step" in err, f"stage {k} did not name the lost stage:\n{err}"
    assert took < 10 + 20, f"the surviving stages took {took:.1f}s to stop"

    steps = [json.load(open(f"{d}/ckpt/stage-{k}.manifest.json"))["checkpoints"][-1]["step"] for k in range(4)]
    assert min(steps) >= 4, f"no checkpoint survived: {steps}"
    run(*flags, "--resume", f"{d}/ckpt", "--save", f"{d}/ckpt", "--metrics", f"{d}/second.jsonl", binary=LAUNCH)
    second = losses(f"{d}/second.jsonl")
    start = min(second) - 1
    assert start in steps, f"resumed at step {start}, not a saved step {steps}"
    assert sorted(second) == list(range(start + 1, 31)), sorted(second)
    for step, loss in second.items():
        assert loss == whole[step], f"step {step}: resumed {loss} != uninterrupted {whole[step]}"


def check_tls():
    """Stages over mutual TLS train exactly as over plain TCP; a stage whose certificate
    comes from another CA is refused."""
    d = fresh("tls")
    for name in ["certs", "other"]:
        subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "..", "..", "examples", "make_certs.sh"),
                        f"{d}/{name}", "2"], check=True, capture_output=True)
    flags = [*TINY, "--steps", "4", "--stages", "2"]
    plain = result(run(*flags, "--metrics", f"{d}/plain.jsonl", binary=LAUNCH))
    tls = result(run(*flags, "--tls-dir", f"{d}/certs", "--metrics", f"{d}/tls.jsonl", binary=LAUNCH))
    assert tls["transport"] == "tls" and plain["transport"] == "tcp"
    assert losses(f"{d}/plain.jsonl") == losses(f"{d}/tls.jsonl")
    # Stage 1 presents a certificate of another run's CA: stage 0 must refuse it.
    import shutil as sh
    mixed = f"{d}/mixed"
    sh.copytree(f"{d}/certs", mixed)
    for ext in ["crt", "key"]:
        sh.copy(f"{d}/other/stage-1.{ext}", f"{mixed}/stage-1.{ext}")
    p = run(*flags, "--timeout", "10", "--tls-dir", mixed, expect_rc=1, binary=LAUNCH)
    assert "certificate" in p.stderr.lower(), p.stderr


def check_converges():
    """The default model on TinyShakespeare: validation loss below 2.5 nats (uniform is 4.17)."""
    r = result(run("--steps", "120", "--warmup", "12", "--threads", "2"))
    assert r["val_loss"] < 2.5, f"val_loss {r['val_loss']} after 120 steps is not below 2.5"


globals()["check_" + CHECK]()
print(f"{CHECK}: ok")
