import textwrap

import pytest

from orl_bench.registry import METHODS, TASKS, Registry, RegistryError
from tests.conftest import run_cli


def test_duplicate_names_are_an_error_naming_both_sources():
    reg = Registry("widget", "orl_bench.none", "orl_bench")

    @reg.register("w")
    class First:
        pass

    with pytest.raises(RegistryError, match=r"'w' is registered twice: by .*First and by .*Second"):
        @reg.register("w")
        class Second:
            pass


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(RegistryError, match=r"unknown method 'byl'\. Did you mean 'byol'\? Valid methods: .*byol"):
        METHODS.get("byl")
    with pytest.raises(RegistryError, match=r"Valid tasks: .*voc07_svm"):
        TASKS.get("voc_svm_typo")


def make_plugin_package(root):
    """A third-party package that registers a method through the entry-point group."""
    pkg = root / "ext_ssl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from orl_bench.methods.byol import BYOL

        class ExtBYOL(BYOL):
            """BYOL under another name: stands for any method shipped by another package."""
    '''))
    (pkg / "tiny.yaml").write_text(textwrap.dedent('''
        base: {tiny_scale}
        method: {{name: ext_byol, hidden_dim: 32, proj_dim: 16, views: {{size: 32}}}}
        train: {{epochs: 1}}
    ''').format(tiny_scale=str(root.parent / "tiny_scale.yaml")))
    dist = root / "ext_ssl-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-ssl\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[orl_bench.methods]\next_byol = ext_ssl:ExtBYOL\n")


def test_entry_point_method_is_listed_and_runs(tmp_path, workdir):
    from orl_bench.config import recipe_root
    (tmp_path / "tiny_scale.yaml").write_text((recipe_root("pretrain") / "_scales" / "tiny.yaml").read_text()
                                              .replace("../_data/tiny.yaml",
                                                       str(recipe_root("pretrain") / "_data" / "tiny.yaml")))
    site = tmp_path / "site"
    site.mkdir()
    make_plugin_package(site)
    env = {"PYTHONPATH": str(site)}
    listed = run_cli("list", "methods", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "ext_byol" in listed.stdout and "entry point 'ext_byol = ext_ssl:ExtBYOL' of ext-ssl" in listed.stdout
    run = run_cli("pretrain", "--method", "ext_byol", "--recipe", str(site / "ext_ssl" / "tiny.yaml"),
                  "--workdir", str(workdir), env=env)
    assert run.returncode == 0, run.stderr
    assert (next((workdir / "artifacts").glob("ext_byol-*")) / "manifest.json").is_file()
