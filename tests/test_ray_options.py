"""The Ray Serve application's options and request chunking, without starting Ray (fast; skipped without
`pip install 'routoo_fast[ray]'`). The running application is tested in tests/test_ray.py (slow)."""
import math

import pytest

pytest.importorskip("ray.serve")

from routoo_fast import cli  # noqa: E402
from routoo_fast.serve.batcher import approx_tokens  # noqa: E402
from routoo_fast.serve.ray_app import ServeBatching, build_app  # noqa: E402


def _config(application):
    deployment = application._bound_deployment  # Ray's Application keeps its deployment here
    return deployment, deployment._deployment_config


def test_fixed_replicas_and_resources():
    deployment, config = _config(build_app({"num_replicas": "3", "num_cpus": 2, "max_ongoing_requests": 100}))
    assert config.num_replicas == 3 and config.autoscaling_config is None
    assert config.max_ongoing_requests == 100
    assert deployment.ray_actor_options["num_cpus"] == 2


def test_autoscaling_from_min_max():
    _, config = _config(build_app({"min_replicas": 1, "max_replicas": "4", "target_ongoing_requests": 8}))
    auto = config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 4, 8)


@pytest.mark.parametrize("args, match", [({"replicas": 2}, r"unknown option\(s\) \['replicas'\]"),
                                         ({"max_batch": "many"}, "option max_batch='many': expected int"),
                                         ({"no_batching": "maybe"}, "expected bool")])
def test_bad_options_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        build_app(args)


def test_serve_flags_map_onto_the_application_options():
    args = cli.build_parser().parse_args(["serve", "--ray", "--autoscale", "2:6", "--max-batch", "16",
                                          "--cpus-per-replica", "2", "--policy", "lambda=500"])
    options = cli.serve_ray_options(args)
    assert options["min_replicas"] == 2 and options["max_replicas"] == 6 and options["num_cpus"] == 2
    assert options["max_batch"] == 16 and options["policy"] == "lambda=500"
    _, config = _config(build_app(options))
    assert config.autoscaling_config.max_replicas == 6
    for bad in ("6", "3:1", "a:b", "0:0"):
        with pytest.raises(cli.UserError, match="--autoscale must be MIN:MAX"):
            cli.serve_ray_options(cli.build_parser().parse_args(["serve", "--ray", "--autoscale", bad]))


class _Submit:
    def set_max_batch_size(self, n):
        self.max_batch_size = n

    def set_batch_wait_timeout_s(self, s):
        self.wait = s


@pytest.mark.parametrize("max_tokens", [None, 100])
def test_chunks_respect_both_pass_limits(max_tokens):
    submit = _Submit()
    batching = ServeBatching(submit, predict=None)
    batching.configure(0.005, 8, max_tokens, 16)
    assert submit.max_batch_size == 8 and submit.wait == 0.005
    prompts = [("word " * n).strip() for n in (3, 50, 7, 120, 1, 1, 1, 1, 1, 1, 1, 1, 1, 90, 2)]
    chunks = batching.chunks(prompts)
    assert [p for c in chunks for p in c.prompts] == prompts  # in order, nothing lost
    for c in chunks:
        tokens = sum(approx_tokens(p) for p in c.prompts)
        assert len(c.prompts) <= 8
        assert 1 <= c.units <= 8 and c.units >= len(c.prompts)
        if max_tokens is not None:
            assert tokens <= max_tokens or len(c.prompts) == 1  # a prompt over the budget runs alone
            assert c.units == min(8, max(len(c.prompts), math.ceil(tokens * 8 / max_tokens)))


def test_stats_have_the_micro_batchers_keys():
    from routoo_fast.serve.batcher import MicroBatcher

    ours = ServeBatching(_Submit(), predict=None).stats()
    with MicroBatcher(lambda prompts: None) as theirs:
        assert set(ours) == set(theirs.stats())
