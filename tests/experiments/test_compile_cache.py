"""A sweep command's compilation cache: in its workdir, unless the environment names one."""
import jax
import pytest

from experiments import compile_cache

SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture
def restored_jax_settings():
  before = {name: getattr(jax.config, name) for name in SETTINGS}
  yield
  for name, value in before.items():
    jax.config.update(name, value)


def test_the_cache_goes_in_the_workdir(tmp_path, monkeypatch, restored_jax_settings):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  path = compile_cache.enable(tmp_path / "runs")
  assert path == tmp_path / "runs" / "compile_cache"
  assert jax.config.jax_compilation_cache_dir == str(path)
  assert jax.config.jax_persistent_cache_min_compile_time_secs == \
      compile_cache.MIN_COMPILE_SECONDS


def test_a_cache_the_environment_names_is_kept(tmp_path, monkeypatch, restored_jax_settings):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  before = jax.config.jax_compilation_cache_dir
  assert compile_cache.enable(tmp_path / "runs") is None
  assert jax.config.jax_compilation_cache_dir == before
