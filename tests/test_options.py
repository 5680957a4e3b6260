"""The estimate's options: each group checks itself once, the command line offers exactly its fields, and an
option out of range is a usage error that names the flag (docs/estimator.md; README.md, "The command line")."""

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from vrcurve.cli import app
from vrcurve.errors import VRCurveError
from vrcurve.estimator import estimate
from vrcurve.options import (
    CurveOptions,
    DataOptions,
    EstimateOptions,
    Form,
    Likelihood,
    OptionError,
    OutputOptions,
    VAEOptions,
    choices,
    flags,
)
from vrcurve.schedulers import LinearScheduler

runner = CliRunner()

BAD = [
    (lambda: CurveOptions(LinearScheduler(), noise=0), "--noise"),
    (lambda: CurveOptions(LinearScheduler(), timesteps=1), "--timesteps"),
    (lambda: CurveOptions(LinearScheduler(), seed=-1), "--seed"),
    (lambda: CurveOptions(LinearScheduler(), chunk_size=0), "--chunk-size"),
    (lambda: CurveOptions(LinearScheduler(), likelihood="max"), "--likelihood"),
    (lambda: CurveOptions(LinearScheduler(), form="other"), "--form"),
    (lambda: CurveOptions(LinearScheduler(), precision="fp8"), "--precision"),
    (lambda: CurveOptions(LinearScheduler(), noise=2.5), "--noise"),
    (lambda: EstimateOptions(CurveOptions(LinearScheduler()), table_size=1), "--table-size"),
    (lambda: EstimateOptions(CurveOptions(LinearScheduler()), bootstrap=-1), "--bootstrap"),
    (lambda: EstimateOptions(CurveOptions(LinearScheduler()), uniform_mix=1.0), "--uniform-mix"),
    (lambda: EstimateOptions(CurveOptions(LinearScheduler()), uniform_mix=-0.1), "--uniform-mix"),
    (lambda: DataOptions("d.npy", samples=0), "--samples"),
    (lambda: DataOptions("d.npy", resolution=0), "--resolution"),
    (lambda: DataOptions("d.npy", normalization="l2"), "--normalize"),
    (lambda: DataOptions("d.npy", moments="median"), "--moments"),
    (lambda: DataOptions("d.npy", moments_kind="var"), "--moments-kind"),
    (lambda: DataOptions("d.npy", min_bucket=1), "--min-bucket"),
    (lambda: VAEOptions("vae", sample="mode"), "--vae-sample"),
    (lambda: VAEOptions("vae", dtype="int8"), "--vae-dtype"),
    (lambda: VAEOptions("vae", batch_size=0), "--vae-batch-size"),
]


@pytest.mark.parametrize("make, flag", BAD)
def test_an_option_out_of_range_names_its_flag(make, flag):
    with pytest.raises(OptionError) as info:
        make()
    assert info.value.option == flag
    assert isinstance(info.value, VRCurveError)  # library callers catch one type


def test_choices_are_stored_as_plain_strings():
    """An enum member and its string make the same options (the metadata records plain strings)."""
    a = CurveOptions(LinearScheduler(), likelihood=Likelihood.sum, form=Form.paper)
    b = CurveOptions(LinearScheduler(), likelihood="sum", form="paper")
    assert a == b and type(a.likelihood) is str and type(a.form) is str


def test_contradicting_options_are_refused_before_any_data_is_read():
    with pytest.raises(VRCurveError, match="drop --moments"):
        DataOptions("no/such/folder", moments="mean", vae=VAEOptions("vae"))
    with pytest.raises(VRCurveError, match="--scaling-factor must be a finite non-zero number"):
        DataOptions("no/such/folder", scaling_factor=0.0)


def test_the_factors_default_to_the_vae_config_only_when_not_given():
    given = DataOptions("x", scaling_factor=0.5, vae=VAEOptions("vae", sample="mean"))
    config = DataOptions("x", vae=VAEOptions("vae"))
    assert given.transform(0.18215, 0.1).scaling_factor == 0.5 and given.transform(0.18215, 0.1).shift_factor == 0.1
    assert config.transform(0.18215, 0.1).scaling_factor == 0.18215
    assert config.transform().scaling_factor == 1.0 and config.transform().shift_factor == 0.0
    assert given.transform().moments == "mean" and given.transform().moments_kind == "logvar"


def test_estimate_checks_its_arguments_with_the_same_options():
    """estimate(...)'s keywords and CurveOptions are one check: the same value fails both, the same way."""
    import torch

    x = torch.randn(4, 3)
    for bad in ({"noise": 0}, {"timesteps": 1}, {"chunk_size": 0}, {"seed": -1}):
        with pytest.raises(OptionError) as from_estimate:
            estimate(x, LinearScheduler(), **bad)
        with pytest.raises(OptionError) as from_options:
            CurveOptions(LinearScheduler(), **bad)
        assert str(from_estimate.value) == str(from_options.value)


def _estimate_flags():
    command = typer.main.get_command(app).commands["estimate"]
    return {name for p in command.params if p.param_type_name == "option" for name in p.opts if name.startswith("--")}


def test_the_command_line_offers_exactly_the_option_groups_fields():
    """Every field of DataOptions and EstimateOptions is one flag of `estimate`, and every flag of `estimate` is
    a field, or says where the run happens, what to write, or which scheduler (its parameters are the
    scheduler's, recorded by its describe())."""
    fields = set(flags(DataOptions("d", vae=VAEOptions("v")))) | set(flags(EstimateOptions(CurveOptions(LinearScheduler()))))
    fields -= {"--noise-space"}  # the direct reference's draw, for tests and benchmarks: no flag
    outside = {"--out", "--overwrite", "--device", "--json", "--quiet", "--shift", "--beta-min", "--beta-max",
               "--custom"}
    assert _estimate_flags() == fields | outside
    assert {f.name for f in dataclasses.fields(OutputOptions)} == {"path", "overwrite"}


@pytest.mark.parametrize("args, flag", [
    (["--bootstrap", "-1"], "--bootstrap"), (["--table-size", "1"], "--table-size"),
    (["--min-bucket", "1"], "--min-bucket"), (["--uniform-mix", "1"], "--uniform-mix"),
    (["--chunk-size", "0"], "--chunk-size"), (["--vae", "v", "--vae-batch-size", "0"], "--vae-batch-size"),
    (["--resolution", "0"], "--resolution"), (["-T", "1"], "--timesteps"),
])
def test_an_option_out_of_range_is_a_usage_error(tmp_path, args, flag):
    out = tmp_path / "vr.safetensors"
    res = runner.invoke(app, ["estimate", "--data", "demo", "-o", str(out), *args])
    assert res.exit_code == 2, res.output
    assert flag in res.output and "Traceback" not in res.output and not out.exists()


def test_flags_name_every_field_once():
    data = DataOptions("d", vae=VAEOptions("v"))
    values = flags(data)
    assert values["--data"] == "d" and values["--vae"] == "v" and values["--normalize"] == "global"
    assert len(values) == len(dataclasses.fields(DataOptions)) - 1 + len(dataclasses.fields(VAEOptions))
    curve = flags(EstimateOptions(CurveOptions(LinearScheduler(shift=3.0), noise=7)))
    assert curve["--scheduler"] == LinearScheduler(shift=3.0).describe() and curve["--noise"] == 7


def test_the_docs_run_estimate_snippet_writes_what_the_command_line_writes(tmp_path, monkeypatch, capsys):
    """docs/estimator.md, "From Python": the snippet runs, and its artifact equals the command line's with the
    same flags."""
    import re
    from pathlib import Path

    import numpy as np

    from vrcurve.artifact import read_artifact

    text = (Path(__file__).resolve().parents[1] / "docs" / "estimator.md").read_text()
    code = re.search(r"<!-- snippet:run-estimate:begin -->\s*```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/estimator.md:run-estimate", "exec"), {})
    assert "samples_chosen" in capsys.readouterr().out
    res = runner.invoke(app, ["estimate", "--data", "demo", "-M", "64", "-K", "16", "-T", "200", "--bootstrap", "0",
                              "-o", "cli.safetensors", "-q"])
    assert res.exit_code == 0, res.output
    (a, meta_a), (b, meta_b) = read_artifact("vr.safetensors"), read_artifact("cli.safetensors")
    for name in ("pdf", "cdf", "variance"):
        np.testing.assert_array_equal(a[name], b[name])
    assert meta_a["logitnormal_m"] == meta_b["logitnormal_m"] and meta_a["data"] == meta_b["data"]


def test_every_string_choice_is_stored_as_a_plain_string():
    from vrcurve.options import Moments, MomentsKind, NoiseSpace, Normalize, Precision, VAEDtype

    data = DataOptions("d.npy", normalization=Normalize.channel, moments=Moments.mean, moments_kind=MomentsKind.std)
    vae = VAEOptions("vae", sample=Moments.mean, dtype=VAEDtype.float16)
    curve = CurveOptions(LinearScheduler(), precision=Precision.bf16, noise_space=NoiseSpace.ambient)
    values = (data.normalization, data.moments, data.moments_kind, vae.sample, vae.dtype, curve.precision,
              curve.noise_space)
    assert values == ("channel", "mean", "std", "mean", "float16", "bf16", "ambient")
    assert all(type(v) is str for v in values)
    assert Normalize.global_.value == "global" and Normalize("global") is Normalize.global_


def test_the_vae_encodes_in_exactly_the_dtypes_offered():
    from vrcurve.options import VAEDtype
    from vrcurve.vae import VAE_DTYPES

    assert tuple(VAE_DTYPES) == choices(VAEDtype)


def test_every_choice_on_the_command_line_is_an_enum_of_the_library():
    """Every option of every command that offers choices takes one of vrcurve.options' enums: the command line
    defines none of its own."""
    import enum
    import typing

    import vrcurve.options as opts

    seen = 0
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            annotation = param.type_descriptor.annotation
            kinds = [a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type)]
            for kind in (k for k in kinds if issubclass(k, enum.Enum)):
                seen += 1
                assert getattr(opts, kind.__name__, None) is kind, (command.name, param.name)
    assert seen >= 9  # estimate's seven, fit-logitnormal's --convention, export's --to
