"""Regenerate the README's preset and axes tables from the registry (tests/test_layout.py checks them).

    python scripts/update_readme_tables.py
"""
import re
from pathlib import Path

from tailtune.config import axes_table, preset_table

README = Path(__file__).resolve().parents[1] / "README.md"
text = README.read_text()
for marker, table in (("presets", preset_table()), ("axes", axes_table())):
    text, n = re.subn(rf"(<!-- {marker}:start.*?-->\n).*?(\n<!-- {marker}:end -->)",
                      lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    assert n == 1, f"no {marker} block in the README"
README.write_text(text)
print(f"updated {README}")
