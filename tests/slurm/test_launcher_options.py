"""The Slurm launcher's options without a cluster: what the job re-runs, the config file under the
command line, and the torch.distributed environment derived from Slurm's."""
from __future__ import annotations

import pytest

from orl_bench.cli import build_parser, main
from orl_bench.config import ConfigError
from orl_bench.slurm import job_argv, resolve, torch_distributed_env


def test_job_reruns_the_command_less_the_launcher_options():
    argv = ["pretrain", "--method", "byol", "--launcher", "slurm", "--nodes", "2", "--mem=4G", "--slurm", "a=b",
            "--wait", "--set", "train.epochs=1"]
    assert job_argv(argv) == ["pretrain", "--method", "byol", "--set", "train.epochs=1"]


@pytest.mark.parametrize("command", [["pretrain", "--method", "byol"], ["table", "1"]])
def test_abbreviated_launcher_option_is_refused(command, capsys):
    # argparse takes --nod for --nodes; stripped by its full name only, it would reach the job (for
    # `table`, its last job, which writes the tables)
    assert main([*command, "--recipe", "tiny", "--launcher", "slurm", "--nod", "2"]) == 2
    assert "spell the launcher options in full with --launcher slurm: --nodes given abbreviated" in \
        capsys.readouterr().err


def test_command_line_wins_over_the_config_file(tmp_path):
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: gpu\nnodes: 2\nmem: 64G\nslurm: {exclusive: true, comment: cfg}\n")
    args = build_parser().parse_args(["pretrain", "--method", "byol", "--launcher", "slurm", "--nodes", "4",
                                      "--slurm", "comment=cli"])
    resources, extra = resolve(args, {"ORL_BENCH_SLURM_CONFIG": str(config)})
    assert resources == {"partition": "gpu", "nodes": 4, "mem": "64G"}
    assert extra == {"exclusive": True, "comment": "cli"}


@pytest.mark.parametrize("text, says", [("nodes: many\n", "nodes in .* takes int"), ("gpus: 8\n", "unknown: gpus"),
                                        ("- a\n", "expected a mapping"), ("time: 2:00:00\n", "quote the time")])
def test_bad_config_file_names_itself(tmp_path, text, says):
    config = tmp_path / "slurm.yaml"
    config.write_text(text)
    args = build_parser().parse_args(["pretrain", "--method", "byol", "--launcher", "slurm"])
    with pytest.raises(ConfigError, match=says):
        resolve(args, {"ORL_BENCH_SLURM_CONFIG": str(config)})


def test_torch_environment_from_slurms():
    env = {"SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7", "SLURM_JOB_ID": "40123", "SLURM_NTASKS": "16",
           "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}
    assert torch_distributed_env(env) == {"MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "20123", "WORLD_SIZE": "16",
                                          "RANK": "9", "LOCAL_RANK": "1"}
