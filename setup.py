"""Build the C++ catalog index (csrc/) through CMake + pybind11."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class BuildFailed(RuntimeError):
    pass


def _find_cxx() -> str | None:
    """$CXX if set (an error if it does not exist), else the first of c++, g++, clang++."""
    if os.environ.get("CXX"):
        cxx = os.environ["CXX"]
        if not shutil.which(cxx.split()[0]):
            raise BuildFailed(f"rere: $CXX is set to {cxx!r}, which is not an executable on PATH.")
        return cxx
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        cxx = _find_cxx()
        if cxx is None:
            raise BuildFailed(
                "rere: no C++ compiler found (tried $CXX, c++, g++, clang++). The catalog index "
                "is C++17; install one (Debian/Ubuntu: `apt-get install g++`, macOS: "
                "`xcode-select --install`) or point $CXX at it, then install rere again."
            )
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        configure = [
            "cmake", str(ext.source_dir),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_CXX_COMPILER={shutil.which(cxx.split()[0])}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DRERE_WERROR={'ON' if os.environ.get('RERE_WERROR') == '1' else 'OFF'}",
        ]
        jobs = str(os.cpu_count() or 1)
        for step, cmd in (("configure", configure),
                          ("compile", ["cmake", "--build", ".", "--config", config, "-j", jobs])):
            result = subprocess.run(cmd, cwd=build_dir, capture_output=True, text=True)
            if result.returncode != 0:
                log = (result.stdout + result.stderr).strip().splitlines()
                tail = "\n".join(log[-40:])
                raise BuildFailed(
                    f"rere: the C++ catalog index failed to {step} (compiler: {cxx}).\n"
                    f"--- last lines of the CMake/compiler output ---\n{tail}\n---\n"
                    "rere needs CMake >= 3.18 and a C++17 compiler (g++ >= 9 or clang++ >= 10)."
                )


setup(
    packages=find_packages(include=["rere", "rere.*"]),
    ext_modules=[CMakeExtension("rere._trie", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
