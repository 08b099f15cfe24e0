"""A short run of the reliability trials (benchmarks/reliability.py runs the long one)."""

from __future__ import annotations

import random

import pytest

from blocks import RkeSettings
from lab.reliability import Lab, Tally, r1_trial, r2_race, timed_rke
from tests.flowenv import Env

LAB_FIRST_ADDRESS = 80

pytestmark = pytest.mark.usefixtures("prefect_server")


def lab_of(env: Env) -> Lab:
    spec = env.spec()
    return Lab(env.blocks, env.root, spec.model_dump_json(), env.faults, "test", env.name)


def test_r1_kill_9_of_rke_never_loses_state_and_reruns_converge(env: Env):
    lab, tally, rng = lab_of(env), Tally(), random.Random(1)
    for _ in range(3):
        r1_trial(lab, rng, tally, targets=("rke",))
    assert tally.trials == 3
    assert tally.problems == []


def test_r2_two_operations_at_once_never_interleave(env: Env, tmp_path):
    binary, log = timed_rke(tmp_path, env.rke)
    RkeSettings(binary=binary).save(env.blocks["rke_settings"], overwrite=True)
    lab, tally, rng = lab_of(env), Tally(), random.Random(2)
    for _ in range(3):
        r2_race(lab, log, rng, tally)
    assert tally.trials == 3
    assert tally.problems == []
