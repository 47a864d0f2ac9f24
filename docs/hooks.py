"""MkDocs hook: the repository files that the docs link to from outside ``docs/``.

The pages link to figures, experiment configs and the READMEs of ``benchmarks/`` and
``experiments/`` by their path relative to the page *in the repository* (from
``docs/results/experiments.md``: ``../../figures/ginc/convergence.png``), so the same links
work when the Markdown is read on GitHub. MkDocs only knows the files under ``docs/``; this hook
adds each of these repository files under that same relative path (``../figures/...``), so
MkDocs resolves and checks every such link (``mkdocs build --strict`` fails on a broken one)
and copies the file into the site under ``repository/``. Nothing is downloaded and nothing is
written outside the site folder.

A README added this way is a page of its own. Its links back into the docs (from
``figures/README.md``: ``../docs/results/icl.md``) are rewritten for the site to links relative
to the docs folder (``/results/icl.md``, which mkdocs.yml's ``absolute_links:
relative_to_docs`` resolves and checks like any other link).
"""

from __future__ import annotations

import glob
import os
import posixpath
import re

from mkdocs.structure.files import File, InclusionLevel

LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?\)")

#: Repository files (globs relative to the repository root) that pages may link to.
REPO_FILES = (
    "figures/README.md",
    "figures/**/*.png",
    "figures/**/*.pdf",
    "figures/**/*.csv",
    "figures/**/*.json",
    "experiments/README.md",
    "experiments/*.toml",
    "benchmarks/README.md",
)


def on_files(files, config):
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    docs_dir = os.path.abspath(config.docs_dir)
    up = posixpath.relpath(root.replace(os.sep, "/"), docs_dir.replace(os.sep, "/"))   # ".."
    for pattern in REPO_FILES:
        for path in sorted(glob.glob(pattern, root_dir=root, recursive=True)):
            rel = path.replace(os.sep, "/")
            if rel.endswith(".md"):        # a README becomes the page repository/<folder>/
                dest = posixpath.join("repository", posixpath.dirname(rel), "index.html")
            else:
                dest = posixpath.join("repository", rel)
            # a README is a page of its own, reached by links only (not in the nav)
            inclusion = InclusionLevel.NOT_IN_NAV if rel.endswith(".md") else InclusionLevel.INCLUDED
            files.append(File(posixpath.join(up, rel), docs_dir, config.site_dir,
                              config.use_directory_urls, dest_uri=dest, inclusion=inclusion))
    return files


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri
    if not src.startswith("../"):
        return markdown
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    docs = posixpath.relpath(os.path.abspath(config.docs_dir).replace(os.sep, "/"), root.replace(os.sep, "/"))
    up = posixpath.relpath(root.replace(os.sep, "/"), os.path.abspath(config.docs_dir).replace(os.sep, "/"))
    here = posixpath.dirname(posixpath.relpath(src, up))          # the page's folder in the repository

    def fix(m):
        target = posixpath.normpath(posixpath.join(here, m.group(2)))
        if target.startswith(docs + "/"):
            return f"{m.group(1)}/{target[len(docs) + 1:]}{m.group(3) or ''})"
        return m.group(0)

    return LINK.sub(fix, markdown)
