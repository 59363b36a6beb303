"""`animad import`: sd-scripts files in, a job folder out.

A side room of its own: it reads what users bring from sd-scripts (launch files, --config_file and
dataset TOMLs, GUI presets) and writes a job folder that intake then checks like any other. It sits
above `intake/` (it checks what it writes, and knows which files are images) and only `cli/` imports it.

  shell_syntax.py, shell.py   a .sh lexed, parsed and walked as bash would, without running it
  batch.py, powershell.py     the same for .bat/.cmd and .ps1
  words.py, integers.py       what the shell readers hand on (unknown values as markers); $(( )) maths
  launch.py                   the training command's flags, as sd-scripts' argparse reads them
  sources.py, read.py         flags and dataset subsets with their origins; TOMLs (lenient), the file mix
  gui.py, prompts.py          kohya_ss / SD-Trainer presets; --sample_prompts files
  flags.py                    every option of sd-scripts' Anima trainer: its type, and why an unmapped one is left out
  translate.py, network.py, optimizer.py, records.py   flags -> job.yaml entries, reasons, problems
  write.py                    job.yaml (each line commented) and IMPORT.txt
  folder.py                   the job folder: image_dirs copied and verified, the model set, job.yaml last

The table of sd-scripts/kohya_ss names -> job.yaml keys stays in config/aliases.py: the job.yaml
parser's "this is sd-scripts' X; here it is Y" hints read it too, and config/ is below this package.
"""
