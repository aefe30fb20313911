from __future__ import annotations

import re

import pytest

from hpsearch.errors import BadInput
from hpsearch.spec import INT_BOUNDS, build_spec, make_config, parse_space, parse_values, point_problem

from helpers import run


def test_lists_are_sorted_and_deduplicated():
    assert parse_values("lr", "1e-2, 1e-1,1e-2").grid() == (0.01, 0.1)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("lr", "1e-4:1e-1:4", (1e-4, 1e-3, 1e-2, 1e-1)),
        ("weight_decay", "0,1e-5:1e-3:3", (0.0, 1e-5, 1e-4, 1e-3)),
        ("batch_size", "16:128", (16, 32, 64, 128)),
        ("batch_size", "16:256:3", (16, 64, 256)),
        ("momentum", "0:0.99:3", (0.0, 0.9, 0.99)),
        ("momentum", "0.9", (0.9,)),
    ],
)
def test_ranges_are_spaced_on_the_natural_scale(name, text, expected):
    assert parse_values(name, text).grid() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("grid", {"lr": "0,1e-2"}, "learning rate must be > 0"),
        ("grid", {"lr": "-1e-3"}, "learning rate must be > 0"),
        ("grid", {"lr": "1e-1:1e-3:3"}, "low end must be below"),
        ("grid", {"lr": "1e-4:1e-1"}, "a grid needs a list of values or a count"),
        ("grid", {"lr": "1e-4:1e-1:1"}, "count of a range must be an integer from 2 to 1000000000"),
        ("grid", {"lr": "1e-4:1e-1:x"}, "count of a range must be an integer from 2 to 1000000000"),
        ("grid", {"lr": "abc"}, "'abc' is not a number"),
        ("grid", {"lr": "1e-3,,1e-2"}, "give a comma list"),
        ("grid", {"lr": "1:2:3:4"}, "a range is LOW:HIGH"),
        ("grid", {"weight_decay": "-1e-4"}, "weight decay must be >= 0"),
        ("grid", {"weight_decay": "0:1e-2:3"}, "cannot start at 0"),
        ("grid", {"batch_size": "0"}, "an integer from 1 to 1048576"),
        ("grid", {"batch_size": "12.5"}, "an integer from 1 to 1048576"),
        ("grid", {"batch_size": "20:100"}, "powers of two"),
        ("grid", {"momentum": "1"}, "momentum must be in [0, 1)"),
        ("grid", {"momentum": "-0.1"}, "momentum must be in [0, 1)"),
        ("random", {"lr": "1e-3,1e-5:1e-1"}, "only for weight decay's 0"),
        ("random", {"lr": "1e-5:1e-3,1e-2:1"}, "at most one range"),
        ("grid", {"epochs": 0}, "--epochs 0: give an integer from 1 to 100000"),
        ("random", {"trials": 0}, "--trials 0: give an integer from 1 to 1000000"),
        ("grid", {"device": "gpu"}, "choose auto, cpu, cuda"),
        ("grid", {"study": "a b"}, "--study 'a b'"),
    ],
)
def test_bad_input_is_one_line(command, flags, message):
    with pytest.raises(BadInput) as caught:
        build_spec(command, **flags)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_default_grid_is_the_recipe():
    spec = build_spec("grid")
    assert len(spec.space.grid()) == 24
    assert spec.study == "digits-grid" and spec.epochs == 5


def test_grid_points_are_ordered_by_batch_size():
    points = parse_space("grid", {"batch_size": "128,32"}).grid()
    sizes = [p["batch_size"] for p in points]
    assert sizes == sorted(sizes) and set(sizes) == {32, 128}


def test_sampled_spaces_accept_ranges():
    space = parse_space("tpe", {})
    assert space.lr.is_continuous and space.weight_decay.values == (0.0,)
    assert not space.batch_size.is_continuous  # powers of two are a list
    assert space.batch_size.grid() == (16, 32, 64, 128, 256)


def test_seeds_belong_to_configurations():
    a = make_config({"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 0)
    b = make_config({"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 0)
    c = make_config({"lr": 0.01, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 0)
    d = make_config({"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 1)
    assert a.seed == b.seed and len({a.seed, c.seed, d.seed}) == 3


HUNDRED = ",".join(f"{i}e-3" for i in range(1, 101))  # 100 listed learning rates


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [  # a range count; a product of several lists; both; a counted range a sampler would list as choices
        ("grid", {"lr": "1e-4:1e-1:10000000"}, "the grid holds 60,000,000 points (10,000,000 lr x 3 weight_decay x "
                                                "2 batch_size x 1 momentum), more than the limit of 100,000"),
        ("grid", {"lr": HUNDRED, "weight_decay": HUNDRED.replace("e-3", "e-6"), "batch_size": "16,32,64,128,256",
                  "momentum": "0.1,0.2,0.3"}, "the grid holds 150,000 points (100 lr x 100 weight_decay x 5 batch_size "
                                              "x 3 momentum)"),
        ("grid", {"lr": "1e-5:1:500", "weight_decay": "0,1e-6:1e-2:499"}, "the grid holds 500,000 points"),
        ("random", {"lr": "1e-4:1e-1:10000000"}, "--lr 0.0001:0.1:10000000: 10,000,000 values, more than the limit"),
        ("tpe", {"momentum": "0:0.99:200000"}, "--momentum 0:0.99:200000: 200,000 values"),
    ],
)
def test_a_grid_above_the_limit_is_refused_by_its_size_before_any_point_is_built(command, flags, message):
    with pytest.raises(BadInput) as caught:
        build_spec(command, **flags)
    assert message in str(caught.value) and "--max-points N" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("count", "shown"), [("99999999999999999999999", "99999999999999999999999"),
                                              ("1" + "0" * 5000, "1000000000... (5,001 characters)"),
                                              ("1000000001", "1000000001")])
def test_a_range_count_is_bounded_whatever_its_digits(count, shown):
    with pytest.raises(BadInput) as caught:
        build_spec("grid", lr=f"1e-4:1e-1:{count}", max_points=10**12)
    assert str(caught.value) == f"--lr: the count of a range must be an integer from 2 to 1000000000, not {shown}"


def test_the_size_is_a_product_of_counts_that_matches_the_grid_and_the_limit_can_be_raised():
    flags = {"lr": "1e-4:1e-1:7,0.5", "weight_decay": "0,1e-5:1e-3:3", "batch_size": "16:256", "momentum": "0.9,0.5"}
    space = parse_space("grid", flags)
    assert space.size() == len(space.grid()) == 8 * 4 * 5 * 2
    assert parse_space("grid", {"batch_size": "16:64:50"}).batch_size.size() == 3  # powers of two, not 50
    assert build_spec("grid", lr="1e-4:1e-1:200000", weight_decay="0", batch_size="32", max_points=200_000)
    with pytest.raises(BadInput, match="--max-points 0"):
        build_spec("grid", max_points=0)


# --- every integer has bounds, checked before anything is written ---

BUILD_SPEC_INTS = ("epochs", "seed", "trials", "jobs", "retries")  # the integers build_spec takes


@pytest.mark.parametrize("name", BUILD_SPEC_INTS)
def test_each_integer_is_refused_just_outside_its_bounds_and_taken_on_them(name):
    low, high = INT_BOUNDS[name]
    for value in (low, high):
        assert getattr(build_spec("random", **{name: value}), name) == value
    for value in (low - 1, high + 1, 10**20, -(10**20)):
        with pytest.raises(BadInput) as caught:
            build_spec("random", **{name: value})
        assert str(caught.value) == f"--{name} {value}: give an integer from {low} to {high}"


@pytest.mark.parametrize("text", ["1e20", "2097152", "16:2097152", "0:64"])
def test_batch_sizes_beyond_their_bounds_are_refused(text):
    with pytest.raises(BadInput, match="a batch size must be an integer from 1 to 1048576"):
        parse_values("batch_size", text)


@pytest.mark.parametrize("count", ["1", "1000000001", "99999999999999999999", "9" * 5000])
def test_range_counts_beyond_their_bounds_are_refused(count):
    with pytest.raises(BadInput, match="the count of a range must be an integer from 2 to 1000000000"):
        parse_values("lr", f"1e-4:1e-1:{count}")


def test_stored_values_are_checked_by_the_same_rules():
    good = {"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}
    assert point_problem(good) is None
    assert "a batch size must be an integer from 1 to 1048576, not 1e+20" in point_problem({**good, "batch_size": 10**20})
    assert point_problem({**good, "lr": "fast"}) == "lr 'fast' is not a number"


# (id, arguments, study file text or None, words of the one-line error): flags and study files alike
INT_CASES = [
    ("batch-size-1e20", ["grid", "--batch-size", "1e20"], None, "a batch size must be an integer from 1 to 1048576"),
    ("batch-size-range-end", ["random", "--batch-size", "16:4194304"], None, "from 1 to 1048576"),
    ("epochs-huge-dry-run", ["grid", "--epochs", "99999999999999999999", "--dry-run"], None, "from 1 to 100000"),
    ("epochs-negative", ["tpe", "--epochs", "-3"], None, "--epochs -3: give an integer from 1 to 100000"),
    ("seed-negative", ["grid", "--seed", "-5"], None, "--seed -5: give an integer from 0 to 4294967295"),
    ("seed-2-to-the-32", ["random", "--seed", "4294967296"], None, "from 0 to 4294967295"),
    ("trials-huge", ["random", "--trials", "10000001"], None, "from 1 to 1000000"),
    ("jobs-huge", ["grid", "--jobs", "100000"], None, "from 1 to 256"),
    ("retries-huge", ["grid", "--retries", "101"], None, "from 0 to 100"),
    ("count-huge", ["grid", "--lr", "1e-4:1e-1:99999999999999999999"], None, "from 2 to 1000000000"),
    ("refine-top-huge", ["refine", "--from", "x", "--top", "10000000000"], None, "1<=x<=1000000"),
    ("refine-seed-negative", ["refine", "--from", "x", "--seed", "-1"], None, "--seed -1"),
    ("report-top-huge", ["report", "x", "--top", "99999999999999999999999"], None, "1<=x<=1000000"),
    ("check-population-huge", ["check", "--population", "99999999999"], None, "1<=x<=4096"),
    ("toml-epochs-huge", ["grid", "--dry-run"], "epochs = 99999999999999999999\n", "key 'epochs' = 99999999999999999999"),
    ("toml-epochs-5000-digits", ["grid"], "epochs = 1" + "0" * 5000 + "\n", "a number too long to read"),
    ("toml-seed-negative", ["random"], "seed = -5\n", "key 'seed' = -5: give an integer from 0 to 4294967295"),
    ("toml-trials-huge", ["tpe"], "trials = 10000000\n", "key 'trials' = 10000000"),
    ("toml-jobs-zero", ["grid"], "jobs = 0\n", "key 'jobs' = 0: give an integer from 1 to 256"),
    ("toml-top-huge", ["refine"], 'from = ["x"]\ntop = 9999999999\n', "key 'top' = 9999999999"),
    ("toml-batch-size-1e20", ["grid"], "batch_size = 1e20\n", "key 'batch_size'"),
    ("toml-count-huge", ["grid"], "lr = {low = 1e-4, high = 1e-1, count = 99999999999}\n", "from 2 to 1000000000"),
]


@pytest.mark.parametrize("args, toml, words", [pytest.param(a, t, w, id=i) for i, a, t, w in INT_CASES])
def test_integers_out_of_bounds_are_one_line_before_anything_is_written(workdir, args, toml, words):
    if toml is not None:
        (workdir / "bad.toml").write_text(toml)
        args = [*args, "--config", "bad.toml"]
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.stderr
    assert "internal error" not in lines[0] and not (workdir / "studies").exists()


@pytest.mark.parametrize("optimizers, lrs", [
    (None, "0.0001,0.001,0.01,0.1"),
    ("sgd,nesterov", "0.0001,0.001,0.01,0.1"),
    ("adam", "1e-05,0.0001,0.001,0.01"),
    ("rmsprop,adamw", "1e-05,0.0001,0.001,0.01"),
    ("sgd,adam", "1e-05,0.0001,0.001,0.01,0.1"),  # the union: each optimizer's whole default range
])
def test_a_grid_takes_the_default_learning_rates_of_its_optimizers(optimizers, lrs):
    spec = build_spec("grid", optimizer=optimizers)
    assert spec.space.texts()["lr"] == lrs
    assert build_spec("grid", optimizer=optimizers, lr="0.5").space.texts()["lr"] == "0.5"  # given: as given
    assert build_spec("random", optimizer=optimizers).space.texts()["lr"] == "1e-05:1"


@pytest.mark.parametrize("text, message", [
    ("lion", "--optimizer lion: unknown optimizer 'lion'; choose from sgd, nesterov, adam, adamw, rmsprop"),
    ("sgd,", "--optimizer 'sgd,': give a comma list of sgd, nesterov"),
    ("", "--optimizer '': give a comma list"),
    ("adam:sgd", "unknown optimizer 'adam:sgd'"),
    ("1e-3", "unknown optimizer '1e-3'"),
])
def test_a_bad_optimizer_is_one_line(text, message):
    with pytest.raises(BadInput) as caught:
        build_spec("grid", optimizer=text)
    assert message in str(caught.value)
    result = run("tpe", "--optimizer", text, "--dry-run")
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_the_default_optimizer_and_schedule_leave_the_settings_as_before():
    """A study stored before --optimizer and --schedule existed compares equal on a re-run."""
    plain = build_spec("grid").settings()
    assert "optimizer" not in plain["space"] and "schedule" not in plain and "warmup" not in plain
    chosen = build_spec("grid", optimizer="sgd,adam", schedule="cosine", warmup=1).settings()
    assert chosen["space"]["optimizer"] == "sgd,adam" and chosen["schedule"] == "cosine" and chosen["warmup"] == 1


@pytest.mark.parametrize("flags, message", [
    ({"schedule": "linear"}, "--schedule linear: choose one of constant, step, cosine, exponential"),
    ({"warmup": 5}, "--warmup 5: warm up for fewer epochs than the 5 trained (--epochs)"),
    ({"warmup": -1}, "--warmup -1: give an integer from 0"),
])
def test_a_bad_schedule_is_refused(flags, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        build_spec("grid", **flags)


def test_a_rerun_with_another_schedule_is_refused(workdir):
    flags = ["--study", "sched", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "256", "--epochs", "2"]
    assert run("grid", *flags, "--schedule", "cosine").exit_code == 0
    for other, said in ((["--schedule", "step"], "schedule=cosine, not step"), ([], "schedule=cosine, not constant"),
                        (["--schedule", "cosine", "--warmup", "1"], "warmup=0, not 1")):
        again = run("grid", *flags, *other)
        assert again.exit_code == 2 and f"study 'sched' was run with {said}" in again.stderr, again.output
    assert run("grid", *flags, "--schedule", "cosine", "--lr", "0.1,0.01").exit_code == 0  # the same: it grows
