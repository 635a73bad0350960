; Inno Setup 6 script: installs dist\lmstation (made by packaging\build_windows.ps1) for the current
; user (no admin rights) with Start-menu and optional desktop shortcuts to "LM Station.exe".
; User data (models, chats, settings) lives in %LOCALAPPDATA%\LMStation and survives uninstalling.
#define AppVersion "0.1.0"

[Setup]
AppId={{6F1D7C1E-4B7A-4C59-9E59-2B1F4B6A6C10}
AppName=LM Station
AppVersion={#AppVersion}
AppPublisher=LM Station
DefaultDirName={localappdata}\Programs\LM Station
DefaultGroupName=LM Station
PrivilegesRequired=lowest
DisableProgramGroupPage=yes
OutputDir=..\..\dist
OutputBaseFilename=LMStation-Setup
SetupIconFile=..\..\assets\icons\lmstation.ico
UninstallDisplayIcon={app}\LM Station.exe
Compression=lzma2/normal
SolidCompression=no
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut"; GroupDescription: "Shortcuts:"; Flags: unchecked

[Files]
Source: "..\..\dist\lmstation\*"; DestDir: "{app}"; Flags: recursesubdirs createallsubdirs ignoreversion

[Icons]
Name: "{group}\LM Station"; Filename: "{app}\LM Station.exe"; IconFilename: "{app}\LM Station.exe"
Name: "{group}\LM Station self-test"; Filename: "{app}\lmstation.exe"; Parameters: "--self-test"
Name: "{autodesktop}\LM Station"; Filename: "{app}\LM Station.exe"; Tasks: desktopicon

[Run]
Filename: "{app}\LM Station.exe"; Description: "Start LM Station"; Flags: nowait postinstall skipifsilent
