"""Shared pieces: machine description and Markdown tables."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib.metadata import version


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
            mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {version('torch')}, "
        f"libp2p {version('libp2p')}, trio {version('trio')}"
    )


@dataclass
class Section:
    title: str
    command: str
    settings: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (alt text, path from docs/)

    def markdown(self) -> str:
        out = [f"## {self.title}", "", f"Command: `{self.command}`. {self.settings}", ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append("|" + "|".join("---" for _ in self.header) + "|")
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += self.notes
        for alt, path in self.images:
            out += ["", f"![{alt}]({path})"]
        return "\n".join(out) + "\n"
