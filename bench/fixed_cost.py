"""Fixed cost of a run: a 10-IP day through the whole `enrich_day` graph against the floor, one daily-partitioned
asset that does nothing (bench/floor_definitions.py). Both are run the same way, as the sensor's and the
schedule's runs are, a partitioned job: `python -m dagster job execute -m MODULE -j JOB --tags
'{"dagster/partition": DAY}'` in a fresh child process with a fresh DAGSTER_HOME
holding a copy of dagster_home/dagster.yaml (the default SQLite instance), in-process executor, interleaved
(floor, project, floor, project...) so both see the same load. Then one profile of the 10-IP run:
`-X importtime` (project against floor: the imports only the project pays) and pyinstrument (where its own code
spends the run), summarised as the costs that are NOT Dagster's floor."""

from __future__ import annotations

import ast
import json
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from bench.end_to_end import _child_environment
from bench.measure import PROJECT_ROOT, ChildRun, run_child
from bench.table import INFO, Row, seconds, verdict
from enrichment_pipeline.standins.cymru_server import CymruStandinServer

PROJECT_MODULE, PROJECT_JOB = "enrichment_pipeline.definitions", "enrich_day"  # every asset and check of a day
FLOOR_MODULE, FLOOR_JOB = "bench.floor_definitions", "floor_day_job"
# enrich_day's steps, checks and per-day events with no work in them: Dagster's own cost of this graph's shape.
SHAPE_MODULE, SHAPE_JOB = "bench.floor_graph_definitions", "enrich_day"
FIXED_COST_MAX_RATIO = 1.5
PROJECT_PACKAGE = "enrichment_pipeline"
_CHILD_TIMEOUT_S = 300
_TOP = 10


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def materialize(
    module: str,
    job: str,
    log_dir: Path,
    day: date,
    cymru_port: int,
    work_dir: Path,
    *,
    python_options: Sequence[str] = (),
    ips: int | None = None,
) -> ChildRun:
    """One `dagster job execute` of a day from a fresh instance and inventory; fails unless the run succeeded."""
    work_dir = work_dir.resolve()  # DAGSTER_HOME must be absolute
    if work_dir.exists():
        shutil.rmtree(work_dir)
    home = work_dir / "dagster_home"
    home.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    database = work_dir / "inventory.sqlite"
    env = _child_environment(
        COWRIE_LOG_DIR=str(log_dir),
        CYMRU_HOST="127.0.0.1",
        CYMRU_PORT=str(cymru_port),
        ENRICHMENT_DB_URL=f"sqlite:///{database}",
        DAGSTER_HOME=str(home),
    )
    command = [
        sys.executable,
        *python_options,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        module,
        "-j",
        job,
        "--tags",
        json.dumps({"dagster/partition": day.isoformat()}),
    ]
    child = run_child(command, env=env, timeout_s=_CHILD_TIMEOUT_S, output=work_dir / "run.log")
    if child.returncode != 0 or "RUN_SUCCESS" not in child.output:
        raise RuntimeError(f"running {module} {job} failed (exit {child.returncode}); see {work_dir / 'run.log'}")
    if ips is not None:
        with sqlite3.connect(database) as conn:
            stored = int(conn.execute("SELECT count(*) FROM ip_inventory").fetchone()[0])
        if stored != ips:
            raise RuntimeError(f"the inventory holds {stored} rows after a {ips}-IP day; see {work_dir}")
    return child


def fixed_cost_rows(log_dir: Path, day: date, ips: int, repeats: int, out_dir: Path) -> tuple[list[Row], list[str]]:
    work = out_dir / "fixed-cost"
    floor: list[float] = []
    shape: list[float] = []
    project: list[float] = []
    # No latency: the 10 IPs are one Cymru request, and waiting on it is not a cost of the run.
    with CymruStandinServer(latency_s=0.0) as cymru:
        port = cymru.address[1]
        log(f"8. fixed cost of a run: {ips}-IP day vs the empty-asset floor, {repeats} each, interleaved")
        for attempt in range(repeats):
            floor.append(materialize(FLOOR_MODULE, FLOOR_JOB, log_dir, day, port, work / "floor").seconds)
            shape.append(materialize(SHAPE_MODULE, SHAPE_JOB, log_dir, day, port, work / "shape").seconds)
            project.append(
                materialize(PROJECT_MODULE, PROJECT_JOB, log_dir, day, port, work / "project", ips=ips).seconds
            )
            log(
                f"   #{attempt + 1}: floor {seconds(floor[-1])}, graph shape {seconds(shape[-1])},"
                f" project {seconds(project[-1])}"
            )
        log("   profile: -X importtime, then pyinstrument (floor and project each)")
        imports_floor = materialize(
            FLOOR_MODULE,
            FLOOR_JOB,
            log_dir,
            day,
            port,
            work / "importtime-floor",
            python_options=["-X", "importtime"],
        )
        imports_project = materialize(
            PROJECT_MODULE,
            PROJECT_JOB,
            log_dir,
            day,
            port,
            work / "importtime-project",
            python_options=["-X", "importtime"],
            ips=ips,
        )
        profile_notes = _pyinstrument_notes(log_dir, day, port, work / "pyinstrument", ips)
    floor_s, project_s = statistics.median(floor), statistics.median(project)
    shape_s = statistics.median(shape)
    ratio = project_s / floor_s
    rows = [
        Row(
            f"Run fixed cost: {ips}-IP day, job enrich_day (median of {repeats})",
            seconds(project_s),
            f"{seconds(floor_s)} floor: one empty daily asset (median of {repeats})",
            ratio,
            f"≤ {FIXED_COST_MAX_RATIO:.1f}× floor",
            verdict(ratio <= FIXED_COST_MAX_RATIO),
        ),
        Row(
            f"Run fixed cost: enrich_day's graph shape doing no work (median of {repeats})",
            seconds(shape_s),
            f"{seconds(floor_s)} floor",
            shape_s / floor_s,
            "",
            INFO,
        ),
        Row(
            f"Run fixed cost: the {ips}-IP day above its graph shape's cost",
            seconds(project_s - shape_s),
            f"{seconds(project_s - floor_s)} above the floor in all",
            (project_s - shape_s) / (project_s - floor_s),
            "",
            INFO,
        ),
    ]
    notes = [
        "Fixed cost (bench/fixed_cost.py): `python -m dagster job execute -m MODULE -j JOB --tags"
        f' \'{{"dagster/partition": "{day}"}}\'` as a child process, fresh DAGSTER_HOME (a copy of'
        " dagster_home/dagster.yaml) and SQLite inventory each time, Cymru stand-in without latency; project"
        f" `{PROJECT_MODULE}` job `{PROJECT_JOB}` (every asset and check of a day), floor `{FLOOR_MODULE}` job"
        f" `{FLOOR_JOB}` (one empty asset), graph shape `{SHAPE_MODULE}` job `{SHAPE_JOB}` (enrich_day's steps,"
        " checks and per-day events, no work). Wall times, s:"
        f" project {', '.join(f'{value:.2f}' for value in project)};"
        f" graph shape {', '.join(f'{value:.2f}' for value in shape)};"
        f" floor {', '.join(f'{value:.2f}' for value in floor)}.",
        *_importtime_notes(imports_floor.output, imports_project.output),
        *profile_notes,
    ]
    return rows, notes


# --- -X importtime ---------------------------------------------------------------------------------------------
@dataclass
class Import:
    name: str
    level: int
    self_us: int
    cumulative_us: int
    parent: Import | None = None
    children: list[Import] = field(default_factory=list)


def parse_importtime(text: str) -> list[Import]:
    """The `import time:` lines of a log, with each import's parent (the import that caused it)."""
    imports: list[Import] = []
    pending: dict[int, list[Import]] = {}
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        stripped = name[1:]  # one space after the bar, then two per level of nesting
        level = (len(stripped) - len(stripped.lstrip(" "))) // 2
        entry = Import(stripped.strip(), level, int(self_us), int(cumulative_us))
        # -X importtime prints an import after the imports it caused, one level deeper.
        for child in pending.pop(level + 1, []):
            child.parent = entry
            entry.children.append(child)
        pending.setdefault(level, []).append(entry)
        imports.append(entry)
    return imports


def _is_project(name: str) -> bool:
    return name == PROJECT_PACKAGE or name.startswith(PROJECT_PACKAGE + ".")


def _importer(entry: Import) -> str:
    """The project module whose import caused this one (else the direct parent)."""
    node = entry.parent
    while node is not None:
        if _is_project(node.name):
            return node.name
        node = node.parent
    return entry.parent.name if entry.parent else "(top level)"


def non_floor_imports(floor_text: str, project_text: str) -> list[tuple[str, float, list[str]]]:
    """(top-level package, seconds, importing project modules) of what only the project run imports, largest
    first. Each package's outermost imports count once (numpy inside pandas counts as pandas)."""
    floor_names = {entry.name for entry in parse_importtime(floor_text)}
    totals: dict[str, float] = {}
    importers: dict[str, list[str]] = {}
    for entry in parse_importtime(project_text):
        if entry.name in floor_names or _is_project(entry.name):
            continue
        parent = entry.parent
        outermost = parent is None or parent.name in floor_names or _is_project(parent.name)
        if not outermost:
            continue
        package = entry.name.split(".")[0]
        totals[package] = totals.get(package, 0.0) + entry.cumulative_us / 1e6
        who = _importer(entry)
        if who not in importers.setdefault(package, []):
            importers[package].append(who)
    return sorted(((name, total, importers[name]) for name, total in totals.items()), key=lambda item: -item[1])


def module_level_importers(package: str, root: Path = PROJECT_ROOT / PROJECT_PACKAGE) -> list[str]:
    """Project modules that import `package` at module level (so any import of them pays for it)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(name == package or name.startswith(package + ".") for name in names):
                found.append(".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts))
                break
    return found


def project_import_s(text: str) -> float:
    """Seconds importing project modules: their outermost imports (dagster loads the code location itself with
    importlib, which -X importtime does not print, so the module's own imports appear at the top level)."""
    return sum(
        entry.cumulative_us / 1e6
        for entry in parse_importtime(text)
        if _is_project(entry.name) and (entry.parent is None or not _is_project(entry.parent.name))
    )


def _importtime_notes(floor_text: str, project_text: str) -> list[str]:
    extra = non_floor_imports(floor_text, project_text)
    lines = [
        f"- `-X importtime`: the project's modules take {project_import_s(project_text):.2f} s to import"
        f" ({len(parse_importtime(project_text))} imports in the run, {len(parse_importtime(floor_text))} in the"
        " floor's). Packages only the project run imports (outermost imports, largest first; the project module"
        " whose import pulled each in first; the project modules that import it at module level):"
    ]
    for package, total, importers in extra[:_TOP]:
        static = module_level_importers(package)
        where = ", ".join(f"`{name}`" for name in static[:6]) + (
            f" and {len(static) - 6} more" if len(static) > 6 else ""
        )
        first = importers[0] if importers[0] != "(top level)" else "a function at run time"
        lines.append(
            f"  - `{package}` {total:.2f} s, first by `{first}`" + (f"; module level in {where}" if static else "")
        )
    return lines


# --- pyinstrument ----------------------------------------------------------------------------------------------
def _profile(module: str, job: str, log_dir: Path, day: date, port: int, work_dir: Path, ips: int | None):
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    session_file = work_dir.parent / f"{work_dir.name}.pyisession"
    options = ["-m", "pyinstrument", "-r", "pyisession", "-o", str(session_file)]
    materialize(module, job, log_dir, day, port, work_dir, python_options=options, ips=ips)
    session = Session.load(session_file)
    text = ConsoleRenderer(unicode=False, color=False, show_all=False, time="seconds").render(session)
    (work_dir.parent / f"{work_dir.name}.txt").write_text(text, encoding="utf-8")
    return session


def _pyinstrument_notes(log_dir: Path, day: date, port: int, work_dir: Path, ips: int) -> list[str]:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return ["- pyinstrument is not installed (`.venv/bin/pip install pyinstrument`): no runtime profile."]
    floor = _profile(FLOOR_MODULE, FLOOR_JOB, log_dir, day, port, work_dir.with_name("pyinstrument-floor"), None)
    project = _profile(PROJECT_MODULE, PROJECT_JOB, log_dir, day, port, work_dir.with_name("pyinstrument-project"), ips)
    root, floor_root = project.root_frame(), floor.root_frame()
    if root is None or floor_root is None:
        return ["- pyinstrument recorded no samples."]
    imports_s = sum(frame.time for frame in _outermost(root, _is_project_import))
    runtime = _outermost(root, _is_project_call)
    runtime_s = sum(frame.time for frame in runtime)
    grouped: dict[tuple[str, str], list] = {}
    for frame in runtime:
        grouped.setdefault((frame.function, _short(frame.file_path)), []).append(frame)
    heaviest = sorted(grouped.items(), key=lambda item: -sum(frame.time for frame in item[1]))
    lines = [
        f"- pyinstrument (bench/out/fixed-cost/pyinstrument-project.txt, pyinstrument-floor.txt): the {ips}-IP run"
        f" {project.duration:.2f} s wall, {project.cpu_time:.2f} s CPU; the floor {floor.duration:.2f} s wall,"
        f" {floor.cpu_time:.2f} s CPU. Of the project run: {imports_s:.2f} s importing the project's modules,"
        f" {runtime_s:.2f} s in the project's own calls, {project.duration - imports_s - runtime_s:.2f} s the rest"
        " (Dagster: CLI, instance, job build, event log; the floor's whole run is the reference). The heaviest"
        " project calls (outermost project frames, where their time goes below them):"
    ]
    for (function, path), frames in heaviest[:_TOP]:
        total = sum(frame.time for frame in frames)
        below = _packages_below(frames)
        detail = ", ".join(f"{name} {value:.2f} s" for name, value in below[:3])
        lines.append(f"  - `{path}:{function}` {total:.2f} s" + (f" ({detail})" if detail else ""))
    events, floor_events = _time_in(root, "store_event"), _time_in(floor_root, "store_event")
    lines.append(
        f"  - Dagster writing the run's events (`store_event`): {events:.2f} s, the floor's {floor_events:.2f} s"
    )
    ours, theirs = _self_time_by_package(root), _self_time_by_package(floor_root)
    growth = sorted(((name, ours[name] - theirs.get(name, 0.0)) for name in ours), key=lambda item: -item[1])
    lines.append(
        "  - self time by package, project run minus floor run: "
        + ", ".join(f"{name} {delta:+.2f} s" for name, delta in growth[:8])
    )
    return lines


def _time_in(root, function: str) -> float:
    return sum(frame.time for frame in _outermost(root, lambda frame: frame.function.endswith(function)))


def _self_time_by_package(root) -> dict[str, float]:
    totals: dict[str, float] = {}
    pending = [root]
    while pending:
        frame = pending.pop()
        pending.extend(frame.children)
        own = frame.time - sum(child.time for child in frame.children)
        owner = frame
        # "[self]" frames and C functions (sqlite3's execute, marshal's loads...): the calling Python code's package
        while owner.parent is not None and (owner.is_synthetic or owner.file_path in (None, "<built-in>")):
            owner = owner.parent
        name = _package_of(owner.file_path)
        totals[name] = totals.get(name, 0.0) + own
    return totals


def _short(path: str | None) -> str:
    if not path:
        return "?"
    marker = f"/{PROJECT_PACKAGE}/"
    return PROJECT_PACKAGE + "/" + path.split(marker, 1)[1] if marker in path else Path(path).name


def _in_project(frame) -> bool:
    path = frame.file_path or ""
    return f"/{PROJECT_PACKAGE}/" in path and "site-packages" not in path


def _is_project_import(frame) -> bool:
    return _in_project(frame) and frame.function == "<module>"


def _is_project_call(frame) -> bool:
    return _in_project(frame) and frame.function != "<module>" and not _under_project_import(frame)


def _under_project_import(frame) -> bool:
    node = frame.parent
    while node is not None:
        if _is_project_import(node):
            return True
        node = node.parent
    return False


def _outermost(root, predicate) -> list:
    """Frames matching `predicate` with no matching ancestor (so their times do not overlap)."""
    found, pending = [], [root]
    while pending:
        frame = pending.pop()
        if predicate(frame):
            found.append(frame)
        else:
            pending.extend(frame.children)
    return found


def _package_of(path: str | None) -> str:
    if not path:
        return "?"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if f"/{PROJECT_PACKAGE}/" in path:
        return PROJECT_PACKAGE
    if path.startswith("<frozen"):
        return "import system"
    stdlib = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"
    if stdlib in path:
        return "stdlib " + path.split(stdlib, 1)[1].split("/", 1)[0].removesuffix(".py")
    return "other"


def _packages_below(frames: Iterable) -> list[tuple[str, float]]:
    """Time under each project frame by the package of the first non-project frame called from it."""
    totals: dict[str, float] = {}
    pending = [child for frame in frames for child in frame.children]
    while pending:
        frame = pending.pop()
        if _in_project(frame):
            pending.extend(frame.children)
            continue
        package = _package_of(frame.file_path)
        totals[package] = totals.get(package, 0.0) + frame.time
    return sorted(totals.items(), key=lambda item: -item[1])
