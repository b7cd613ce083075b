from medseg.cli import console

console()
