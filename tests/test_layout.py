"""The import arrows the layout forbids stay absent: the pure rules (PURE) import nothing that does
I/O (checked on the imports, with ast)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PURE = ("tasks", "capacity", "protocol", "metagraph", "budget", "plan", "scoring", "records",
        "simulation", "scenarios", "request_shapes", "feedback")
SUBPACKAGES = {p.name for p in (ROOT / "core").iterdir() if (p / "__init__.py").exists()}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_pure_modules_import_no_subpackage_and_no_io_library():
    for name in PURE:
        found = imports(ROOT / "core" / f"{name}.py")
        assert not {m for m in found if m.split(".")[1:2] and m.split(".")[1] in SUBPACKAGES
                    and m.startswith("core.")}, name
        assert not found & {"aiohttp", "httpx", "fastapi", "torch", "sqlite3", "psycopg",
                            "bittensor"}, name


def test_forbidden_arrows():
    def modules(folder):
        return set().union(*(imports(p) for p in (ROOT / folder).rglob("*.py")))

    assert not any(m.startswith("core.validator") for m in modules("core/miner"))
    assert not any(m.startswith("core.miner") for m in modules("core/validator"))
    assert not any(m.startswith("core.chain") for m in modules("core/backends"))
    everything = modules("core") | modules("tests") | modules("scripts") | modules("neurons")
    assert not any(m.startswith(("neurons", "scripts")) for m in everything)
    # development helpers stay out of what ships: the package and its entry points never use them
    assert not any(m.startswith("devtools") for m in modules("core") | modules("neurons"))
    # the transport reads the metagraph's types from their pure module, not the chain's re-export
    assert "core.chain" not in modules("core/transport")
