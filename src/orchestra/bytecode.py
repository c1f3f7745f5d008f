"""Compile an environment's bytecode once into the shared installer cache, and link it in.

Run in the background by the environment's own interpreter (any Python from 3.6 on, standard
library only, so this file keeps to what 3.6 understands)::

    python bytecode.py SITE_PACKAGES CACHE_ARCHIVES [DIR ...]

uv installs a package by hardlinking the files of the unpacked wheel kept in its cache. For
every top-level entry of SITE_PACKAGES that is such a link, the cached copy is compiled (once
for every environment: later installs link the ``.pyc`` files along with the sources, and
Python accepts them since a link keeps the source's size and mtime) and its ``.pyc`` files are
linked into this environment. Whatever is not in the cache, and every DIR, is compiled in
place.

It runs with the generation folder as its working directory, and stops when that folder (the
module was removed) or the cache is removed meanwhile: the open folders' link counts drop to
zero. Compiling creates ``__pycache__`` folders with their parents, so a removal that races
with it could leave a recreated ghost of the removed path; such a ghost, holding nothing but
``.pyc`` files, is removed before it exits. It never fails: its work is an optimisation.
"""

import compileall
import os
import shutil
import sys

PYCACHE = "__pycache__"


def first_file(path):
    """A regular file inside ``path`` (``path`` itself when it is one), or None."""
    if os.path.isfile(path):
        return path
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != PYCACHE]
        for name in filenames:
            return os.path.join(dirpath, name)
    return None


def cache_twin(site, name, archives):
    """The unpacked wheel in the cache whose files ``site/name`` links to, or None."""
    probe = first_file(os.path.join(site, name))
    if probe is None:
        return None
    stat = os.stat(probe)
    if stat.st_nlink < 2:
        return None
    relative = os.path.relpath(probe, site)
    for archive in archives:
        try:
            twin = os.stat(os.path.join(archive, relative))
        except OSError:
            continue
        if (twin.st_ino, twin.st_dev) == (stat.st_ino, stat.st_dev):
            return archive
    return None


def compile_entry(root, name):
    """Compile ``root/name`` (a package folder or a module file) in place."""
    path = os.path.join(root, name)
    if os.path.isdir(path):
        compileall.compile_dir(path, quiet=2, workers=os.cpu_count() or 1)
    elif name.endswith(".py"):
        compileall.compile_file(path, quiet=2)


def link_bytecode(archive, site, name):
    """Hardlink the ``.pyc`` files of ``archive/name`` to the same places under ``site``."""
    path = os.path.join(archive, name)
    if os.path.isdir(path):
        folders = [d for d, _, _ in os.walk(path) if os.path.basename(d) == PYCACHE]
        stem = None
    else:
        folders = [os.path.join(archive, PYCACHE)]
        stem = os.path.splitext(name)[0] + "."
    for folder in folders:
        link_folder(folder, os.path.join(site, os.path.relpath(folder, archive)), stem)


def link_folder(source, target, stem):
    """Link every ``.pyc`` of ``source`` (starting with ``stem`` if given) into ``target``."""
    if not os.path.isdir(os.path.dirname(target)) or not os.path.isdir(source):
        return
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if name.endswith(".pyc") and (stem is None or name.startswith(stem)):
            try:
                os.link(os.path.join(source, name), os.path.join(target, name))
            except OSError:
                pass  # already there, or another filesystem: Python compiles it on import


class Lifeline:
    """Open folders whose removal ends the work, and the paths above them as they were."""

    def __init__(self, paths):
        self.fds = []
        self.chains = []
        for path in paths:
            try:
                self.fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
            except OSError:
                continue
            self.chains.append(identities(os.path.abspath(path)))

    def alive(self):
        """Whether every watched folder still exists (a removed folder has no links)."""
        return all(os.fstat(fd).st_nlink > 0 for fd in self.fds)

    def clean_ghosts(self):
        """Remove a removed folder (or ancestor) that this work recreated, .pyc files only."""
        for chain in self.chains:
            for path, identity in chain:
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                if (stat.st_dev, stat.st_ino) != identity:
                    if only_bytecode(path):
                        shutil.rmtree(path, ignore_errors=True)
                    break


def identities(path):
    """(path, (device, inode)) for ``path`` and each of its ancestors, the root first."""
    chain = []
    while True:
        stat = os.stat(path)
        chain.append((path, (stat.st_dev, stat.st_ino)))
        parent = os.path.dirname(path)
        if parent == path:
            return list(reversed(chain))
        path = parent


def only_bytecode(path):
    """Whether ``path`` holds nothing but folders and .pyc files."""
    for _dirpath, _dirnames, filenames in os.walk(path):
        if any(not name.endswith(".pyc") for name in filenames):
            return False
    return True


def compile_all(site, archive_root, extra, lifeline):
    """Compile SITE_PACKAGES through the cache, then each extra DIR, while still wanted."""
    try:
        archives = [os.path.join(archive_root, a) for a in os.listdir(archive_root)]
    except OSError:
        archives = []
    for name in sorted(os.listdir(site)):
        if not lifeline.alive():
            return
        if name == PYCACHE:
            continue
        archive = cache_twin(site, name, archives)
        if archive is None:
            compile_entry(site, name)
        else:
            compile_entry(archive, name)
            link_bytecode(archive, site, name)
    for folder in extra:
        if not lifeline.alive():
            return
        compileall.compile_dir(folder, quiet=2)


def main(argv):
    """Compile SITE_PACKAGES through the cache at CACHE_ARCHIVES, then each extra DIR."""
    site, archive_root, extra = argv[0], argv[1], argv[2:]
    try:
        lifeline = Lifeline([os.getcwd(), archive_root])
    except OSError:
        return 0  # the generation is already gone
    try:
        compile_all(site, archive_root, extra, lifeline)
    except Exception:
        pass
    if not lifeline.alive():
        lifeline.clean_ghosts()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
