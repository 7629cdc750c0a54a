"""Builds the optional C hot path (loadgen/agent/_echoloop.pyx); everything else is in pyproject.toml.

The extension cimports picows' classes, so it is compiled against the picows of the build
environment (pinned like the runtime one) and records that version; the agent uses it only with
the same picows at run time. A failed compile leaves the pure-Python path (optional=True).
"""

from setuptools import Extension, setup

try:
    import picows
    from Cython.Build import cythonize
except ImportError:  # building without Cython/picows (e.g. an sdist tool): pure Python
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("loadgen.agent._echoloop", ["loadgen/agent/_echoloop.pyx"], optional=True,
                   define_macros=[("PICOWS_BUILD_VERSION", f'"{picows.__version__}"')],
                   extra_compile_args=["-O2", "-g0"])],
        compiler_directives={"language_level": "3"}, quiet=True)

setup(ext_modules=ext_modules)
