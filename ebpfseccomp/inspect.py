"""Old import path of the checker and the disassembler, kept for code written
against it: they live in ebpfseccomp.analysis (checker, report, disasm)."""

from .analysis.checker import check
from .analysis.disasm import disasm, disasm_data
from .analysis.report import HelperUse, Problem, Report

__all__ = ["HelperUse", "Problem", "Report", "check", "disasm", "disasm_data"]
