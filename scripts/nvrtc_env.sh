# nvrtc_env.sh, sourced by test.sh and run.sh: adds the NVRTC wheel folders of the build venv
# (what deps.sh installs where there is no CUDA toolkit) to MOEJIT_NVRTC_SEARCH, the last place
# the library looks for NVRTC.
for _mj_lib in "$PWD"/build/pyenv/lib/python3*/site-packages/nvidia/*/lib; do
  if ls "$_mj_lib"/libnvrtc.so* >/dev/null 2>&1; then
    MOEJIT_NVRTC_SEARCH="${MOEJIT_NVRTC_SEARCH:+$MOEJIT_NVRTC_SEARCH:}$_mj_lib"
  fi
done
unset _mj_lib
export MOEJIT_NVRTC_SEARCH="${MOEJIT_NVRTC_SEARCH:-}"
