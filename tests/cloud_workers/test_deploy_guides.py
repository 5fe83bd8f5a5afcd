"""The deployment guides' commands stay in step with what they deploy: docs/DEPLOY-AWS.md's
`aws cloudformation deploy` parameters with template.yaml's, docs/DEPLOY-CLOUDFLARE.md's queues,
buckets, secrets and variables with wrangler.toml's (and the Worker's code)."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
AWS_GUIDE, CF_GUIDE = ROOT / "docs" / "DEPLOY-AWS.md", ROOT / "docs" / "DEPLOY-CLOUDFLARE.md"
TEMPLATE = ROOT / "cloud_workers" / "aws" / "template.yaml"
WRANGLER = ROOT / "cloud_workers" / "cloudflare" / "wrangler.toml"


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, !GetAtt, ...) read as plain values."""


CloudFormationLoader.add_multi_constructor("!", lambda loader, tag, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)))


def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def commands(path: Path) -> list[list[str]]:
    """Every shell command of the guide's ``sh`` blocks, continuation lines joined, comments cut."""
    found = []
    for block in code_blocks(path, "sh"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(shlex.split(line, comments=True))
    return found


def starting(path: Path, *words: str) -> list[list[str]]:
    return [c[len(words):] for c in commands(path) if c[:len(words)] == list(words)]


def overrides(args: list[str]) -> dict[str, str]:
    """The Key=Value pairs after ``--parameter-overrides`` (up to the next option)."""
    start = args.index("--parameter-overrides") + 1
    pairs = []
    for arg in args[start:]:
        if arg.startswith("--"):
            break
        pairs.append(arg)
    return dict(pair.split("=", 1) for pair in pairs)


def option(args: list[str], name: str) -> list[str]:
    start = args.index(name) + 1
    values = []
    for arg in args[start:]:
        if arg.startswith("--"):
            break
        values.append(arg)
    return values


# --------------------------------------------------------------------------- AWS

def test_the_aws_guides_deploy_commands_name_the_templates_parameters_and_only_those():
    params = template()["Parameters"]
    required = {name for name, spec in params.items() if "Default" not in spec}
    deploys = starting(AWS_GUIDE, "aws", "cloudformation", "deploy")
    assert len(deploys) >= 2, "the first deployment and the rotation's"
    first = overrides(deploys[0])
    assert set(first) == set(params), "the first deploy gives every parameter of template.yaml"
    for args in deploys:
        given = overrides(args)
        assert set(given) <= set(params), f"not parameters of template.yaml: {set(given) - set(params)}"
        # the template has IAM resources and a SAM transform
        assert {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"} <= set(option(args, "--capabilities"))
        assert option(args, "--stack-name") == option(deploys[0], "--stack-name")
    assert required <= set(first)
    for name, value in first.items():  # literal values the template would refuse
        spec = params[name]
        if "AllowedValues" in spec and "$(" not in value:
            assert value in [str(v) for v in spec["AllowedValues"]], name
        if "MinValue" in spec:
            assert spec["MinValue"] <= int(value) <= spec["MaxValue"], name
    # the deployment reads the packaged template (SAM code uploaded), as `package` wrote it
    [package] = starting(AWS_GUIDE, "aws", "cloudformation", "package")
    assert option(package, "--template-file") == ["template.yaml"]
    assert option(deploys[0], "--template-file") == option(package, "--output-template-file")
    # the rotation changes the secret alone: every other parameter keeps its value
    assert set(overrides(deploys[-1])) == {"CallbackSecret"}


def test_the_aws_guide_documents_each_parameter_and_names_real_outputs():
    params, outputs = template()["Parameters"], template()["Outputs"]
    text = AWS_GUIDE.read_text()
    table = set(re.findall(r"^\| `([A-Za-z]+)` \|", text, flags=re.M))
    assert table == set(params)
    named = set(re.findall(r"OutputKey=='([A-Za-z]+)'", text)) | set(re.findall(r"the `([A-Za-z]+)` output", text))
    assert named and named <= set(outputs), named - set(outputs)


def test_the_aws_guides_policies_are_json_and_the_lambda_may_send_from_the_identity_only():
    import json
    for block in code_blocks(AWS_GUIDE, "json"):
        policy = json.loads(block)
        assert policy["Version"] == "2012-10-17" and policy["Statement"]
    role = template()["Resources"]["SenderFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    send = next(s for s in role["Statement"] if "ses:SendEmail" in s["Action"])
    assert "identity/${SenderIdentity}" in send["Resource"]


# --------------------------------------------------------------------------- Cloudflare

def wrangler() -> dict:
    return tomllib.loads(WRANGLER.read_text())


def worker_secrets() -> set[str]:
    return set(re.findall(r"wrangler secret put ([A-Z_]+)", WRANGLER.read_text()))


def test_the_cloudflare_guide_creates_the_queues_and_buckets_wrangler_toml_binds():
    config = wrangler()
    queues = {q["queue"] for q in config["queues"]["producers"]} | \
        {q["queue"] for q in config["queues"]["consumers"]} | \
        {q["dead_letter_queue"] for q in config["queues"]["consumers"] if "dead_letter_queue" in q}
    buckets = {b["bucket_name"] for b in config["r2_buckets"]}
    assert {c[0] for c in starting(CF_GUIDE, "wrangler", "queues", "create")} == queues
    assert {c[0] for c in starting(CF_GUIDE, "wrangler", "r2", "bucket", "create")} == buckets
    assert {c[0] for c in starting(CF_GUIDE, "wrangler", "r2", "bucket", "lifecycle", "add")} <= buckets
    assert {c[0] for c in starting(CF_GUIDE, "wrangler", "queues", "info")} <= queues
    assert starting(CF_GUIDE, "wrangler", "deploy") == [[]]


def test_the_cloudflare_guide_puts_the_secrets_the_worker_reads_and_sets_its_variables():
    put = [c[0] for c in starting(CF_GUIDE, "wrangler", "secret", "put")]
    secrets, variables = worker_secrets(), set(wrangler()["vars"])
    assert set(put) == secrets and "CALLBACK_SECRET" in put
    code = "".join(p.read_text() for p in (WRANGLER.parent).glob("*.js"))
    for name in secrets | variables:
        assert f"env.{name}" in code, f"the Worker does not read {name}"
    assert not secrets & variables, "a secret in [vars] would be in the file"
    text = CF_GUIDE.read_text()
    for name in variables:
        assert f"`{name}`" in text, f"the guide does not say what {name} is"
    # the rotation puts the new callback secret
    assert put.count("CALLBACK_SECRET") == 2


def test_the_readme_links_both_guides():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/DEPLOY-AWS.md)" in readme and "(docs/DEPLOY-CLOUDFLARE.md)" in readme
