"""README.md and docs/ stay navigable: every relative link and every repository path they name
exists, every `python -m` module and `make` target they name resolves, nothing points outside the
repository, README stays short, and every docs/ page is reachable from README.

Text only (no jax): reads the markdown files and the file tree.
"""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]
README_MAX_LINES = 200
README_MAX_WIDTH = 120
PROSE_MAX_WIDTH = 100          # outside tables and code blocks

# Paths in code are checked when they start with one of these top-level directories.
PREFIXES = ("docs", "configs", "experiments", "benchmarks", "notebooks", "moe_jax", "tests",
            ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./<>*-]*)" % "|".join(re.escape(p) for p in PREFIXES))
# Path components that stand for any name: configs/X.py, experiments/SWEEP.py, results/<sweep>/
PLACEHOLDERS = {"X", "NAME", "SWEEP"}
# Named so as not to exist: the typo in docs/training.md's example of a config error.
MISSING_ON_PURPOSE = {"configs/lm_tiyn.py"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")
MAKE = re.compile(r"(?:^|[\s`;&(])make ([a-z][\w-]*)")
FENCE = re.compile(r"^(```|~~~)")


def _split(text: str) -> tuple[list[str], list[str]]:
  """(the lines outside fenced code blocks, the lines inside them)."""
  prose, code, fenced = [], [], False
  for line in text.splitlines():
    if FENCE.match(line.lstrip()):
      fenced = not fenced
      continue
    (code if fenced else prose).append(line)
  return prose, code


def _code(text: str) -> list[str]:
  """Every piece of code: inline `spans` outside fences, and the lines of fenced blocks."""
  prose, code = _split(text)
  spans = re.findall(r"`([^`\n]+)`", "\n".join(prose))
  return spans + code


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path) -> set[str]:
  prose, _ = _split(path.read_text(encoding="utf-8"))
  seen: dict[str, int] = {}
  out = set()
  for line in prose:
    m = re.match(r"#{1,6}\s+(.*)", line)
    if m:
      slug = _slug(m.group(1))
      n = seen.get(slug, 0)
      seen[slug] = n + 1
      out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def _exists(path_text: str) -> bool:
  path_text = path_text.rstrip(".")
  parts = [("*" if p in PLACEHOLDERS or p.startswith("<") or "*" in p else p)
           for p in path_text.rstrip("/").split("/")]
  parts = [re.sub(r"^(X|NAME|SWEEP)(\.\w+)$", r"*\2", p) for p in parts]
  pattern = "/".join(parts)
  if "*" in pattern:
    return any(True for _ in REPO.glob(pattern))
  return (REPO / pattern).exists()


def _rel(page) -> str:
  return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
  text = page.read_text(encoding="utf-8")
  prose, _ = _split(text)
  broken = []
  for target in LINK.findall("\n".join(prose)):
    if re.match(r"[a-z]+:", target):            # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    if not dest.exists():
      broken.append(f"{target}: no such file")
    elif not str(dest).startswith(str(REPO.resolve())):
      broken.append(f"{target}: outside the repository")
    elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
      broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
  assert not broken, f"{_rel(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_repository_paths_in_code_exist(page):
  missing = sorted({p for code in _code(page.read_text(encoding="utf-8"))
                    for p in PATH.findall(code)
                    if p not in MISSING_ON_PURPOSE and not _exists(p)})
  assert not missing, f"{_rel(page)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_commands_name_real_modules_and_make_targets(page):
  code = _code(page.read_text(encoding="utf-8"))
  targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
  bad = []
  for piece in code:
    for module in MODULE.findall(piece):
      if not (REPO / module.split(".")[0]).is_dir():      # an installed tool: pytest, pip
        continue
      path = REPO / module.replace(".", "/")
      if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
        bad.append(f"python -m {module}")
    bad += [f"make {t}" for t in MAKE.findall(piece) if t not in targets]
  assert not bad, f"{_rel(page)} names commands that do not resolve: {sorted(set(bad))}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_nothing_points_outside_the_repository(page):
  text = page.read_text(encoding="utf-8")
  assert "../shared" not in text, f"{_rel(page)} points to ../shared, outside the repository"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_prose_lines_are_short(page):
  prose, _ = _split(page.read_text(encoding="utf-8"))
  long = [line[:60] for line in prose
          if len(line) > PROSE_MAX_WIDTH and not line.lstrip().startswith("|")]
  assert not long, f"{_rel(page)}: prose lines over {PROSE_MAX_WIDTH} characters: {long}"


def test_readme_is_short_and_narrow():
  lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
  assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines"
  wide = [(i, len(line)) for i, line in enumerate(lines, 1) if len(line) > README_MAX_WIDTH]
  assert not wide, f"README.md lines over {README_MAX_WIDTH} characters (line, length): {wide}"


def test_every_docs_page_is_linked_from_readme():
  readme = REPO / "README.md"
  linked = {(REPO / t.partition("#")[0]).resolve()
            for t in LINK.findall(readme.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", t) and t.partition("#")[0]}
  assert DOCS, "docs/ has no pages"
  unlinked = [_rel(p) for p in DOCS if p.resolve() not in linked]
  assert not unlinked, f"docs pages README.md does not link: {unlinked}"


def test_the_checks_catch_what_they_should():
  """The helpers themselves: a missing path, a placeholder, a heading's anchor."""
  assert _exists("configs/lm_tiny.py") and _exists("moe_jax/routing/")
  assert not _exists("configs/lm_nope.py")
  assert _exists("configs/X.py") and _exists("experiments/results/<sweep>/summary.md")
  assert PATH.findall("python -m moe_jax.train --config configs/lm_tiny.py") == [
      "configs/lm_tiny.py"]
  assert PATH.findall("runs/configs/a.py /tmp/moe_jax/x.py") == []
  assert _slug("The `Routing` result") == "the-routing-result"
  assert _slug("MoE++ zero experts") == "moe-zero-experts"
  assert MODULE.findall("python -m moe_jax.hf import --from D") == ["moe_jax.hf"]
  assert MAKE.findall("make test PYTEST_ARGS=-k") == ["test"]
