"""``keeneye train`` as a script sees it: plain progress lines when stdout is not a terminal (nothing
with ``--quiet``), exit 3 naming the gate when the gates refuse the model, and a training run that
``keeneye runs`` lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.cli.train import EXIT_GATES_REFUSED
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import Settings
from keeneye.training.synth.species import generate_species

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # two tiny trainings; minutes on a busy 2-core machine
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

PIPELINE = "species-strict"
TINY = ["--backbone", "resnet10t", "--image-size", "32", "--batch-size", "8", "--epochs", "2"]
STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\w+) ", re.M)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """species-id under another name with a floor no model reaches (accuracy ≥ 1.5), and tiny data."""
    root = tmp_path_factory.mktemp("train-cli")
    spec = PipelineCatalog(Settings(home=root / "home")).get("species-id").model_dump(mode="json")
    spec.update(name=PIPELINE, model={**spec["model"], "name": PIPELINE})
    spec["gates"] = {"metrics": {"accuracy": 1.5}}
    (root / "pipelines").mkdir()
    (root / "pipelines" / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec))
    generate_species(root / "data", 40, seed=3, size=32)
    env = {
        "KEENEYE_HOME": str(root / "home"),
        "KEENEYE_PIPELINES__DIRS": json.dumps([str(root / "pipelines")]),
        "COLUMNS": "200",
    }
    return env, root / "data"


def test_refused_model_exits_3_with_plain_progress_and_a_recorded_run(
    setup: tuple[dict[str, str], Path],
) -> None:
    env, data = setup
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--pipeline", PIPELINE, "--data", str(data), *TINY], env=env)
    assert result.exit_code == EXIT_GATES_REFUSED == 3, (result.output, result.exception)
    assert "the gates refused the model: accuracy = " in result.stderr
    assert "is below the floor 1.5" in result.stderr
    # Not a terminal: one timestamped line per stage, per epoch, per tenth of a count.
    stages = STAMPED.findall(result.stdout)
    assert {"load", "train", "export", "evaluate", "register"} <= set(stages)
    assert re.search(r"train +epoch 1/2 50% loss=", result.stdout)
    assert re.search(r"train +epoch 2/2 100% loss=", result.stdout)
    assert f"registered {PIPELINE} v1 without an alias" in result.stdout

    listed = runner.invoke(app, ["runs", PIPELINE, "--json"], env=env)
    runs = json.loads(listed.stdout)["runs"]
    assert [(r["cause"], r["status"], r["reason"]) for r in runs] == [("manual", "refused", "keeneye train")]
    assert runs[0]["outcome"]["version"] == "1" and runs[0]["outcome"]["gates"]["passed"] is False
    table = runner.invoke(app, ["runs", PIPELINE], env=env).stdout
    assert "refused" in table and "v1" in table


def test_quiet_prints_no_progress(setup: tuple[dict[str, str], Path]) -> None:
    env, data = setup
    args = ["--quiet", "train", "--pipeline", PIPELINE, "--data", str(data), *TINY, "--no-register"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 3, (result.output, result.exception)
    assert STAMPED.findall(result.stdout) == []
    assert "test metrics: accuracy=" in result.stdout  # the result still prints
