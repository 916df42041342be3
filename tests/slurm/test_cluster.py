"""The local Slurm cluster runs batch jobs and spreads a step over both of its nodes."""


def test_batch_job_writes_its_output_file(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    slurm_cluster.run("sbatch", "--wait", f"--output={out}", "--mem=100M", "--time=1",
                      "--wrap", "echo hello from $SLURMD_NODENAME")
    assert out.read_text().strip() in {f"hello from {node}" for node in slurm_cluster.node_names}


def test_step_runs_one_task_on_each_node(slurm_cluster):
    done = slurm_cluster.run("srun", "--nodes=2", "--ntasks=2", "printenv", "SLURMD_NODENAME")
    assert sorted(done.stdout.split()) == slurm_cluster.node_names
