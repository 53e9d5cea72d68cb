"""The README cannot rot: every command in it names an existing script and only flags that script accepts."""

import re
import shlex

from conftest import REPO, run_script


def readme_commands() -> list:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            for part in command.split("&&"):
                if part.split()[:1] not in (["python"], ["torchrun"], ["srun"]):
                    continue
                words = shlex.split(part)  # python script.py ..., or a launcher's: torchrun/srun [python] ...
                scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
                if scripts:
                    commands.append(words[scripts[0]:])
    return commands


def test_readme_commands_match_the_scripts():
    commands = readme_commands()
    scripts = {words[0] for words in commands}
    assert {"scripts/quickstart.py", "finetune/lora.py", "scripts/merge_lora.py", "generate/lora.py",
            "eval/lm_eval_harness.py", "scripts/export_peft.py"} <= scripts
    helps = {}
    for script in sorted(scripts):
        assert (REPO / script).is_file(), f"README names {script}, which does not exist"
        helps[script] = run_script(script, "--help").stdout
    for words in commands:
        for flag in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
            assert re.search(rf"\s{re.escape(flag)}[\s=]", helps[words[0]]), f"{words[0]} has no flag {flag}"


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r"^(python -m pytest .*)$", ci, flags=re.M).group(1)
    assert command in readme
