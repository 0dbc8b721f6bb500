"""Codes the messages carry: LOINC for the differential, local codes (coding system 99WBC) for the rest.

LOINC terms checked against their published long common names (LOINC 2.80, docs/lis.md says how).
A laboratory that maps its own codes edits this table; nothing else holds a code.
"""
from __future__ import annotations

LOINC_SYSTEM_HL7 = "LN"
LOINC_SYSTEM_FHIR = "http://loinc.org"
LOINC_VERSION = "2.80"
UCUM_SYSTEM_FHIR = "http://unitsofmeasure.org"
LOCAL_SYSTEM_HL7 = "99WBC"  # HL7 table 0396: 99zzz = locally defined coding system
LOCAL_SYSTEM_FHIR = "urn:wbc-edge:codes"

# class -> (LOINC code, long common name): the automated differential, percent of leukocytes
DIFFERENTIAL_LOINC = {
    "neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    "lymphocyte": ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
    "monocyte": ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
    "eosinophil": ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
    "basophil": ("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
}

# Local codes: no LOINC term says "white cells classified by this analyzer" or "needs review".
PANEL = ("WBCDIFF", "Leukocyte differential, automated image analysis")
CELLS_COUNTED = ("WBCN", "Leukocytes classified")
REVIEW = ("WBCREV", "Differential needs review")
METHOD = ("IMG4L", "Four-light image classification (MM-MIMO)")
EQUIPMENT_NAMESPACE = "WBC-EDGE"


def class_code(label: str) -> tuple[str, str, str]:
    """(code, text, HL7 coding system) for a class's percent observation; a class without a LOINC
    term (a model with more classes than the five) gets a local code rather than a wrong LOINC."""
    if label in DIFFERENTIAL_LOINC:
        code, name = DIFFERENTIAL_LOINC[label]
        return code, name, LOINC_SYSTEM_HL7
    return f"WBC-{label.upper()[:12]}", f"{label}/100 leukocytes, automated image analysis", LOCAL_SYSTEM_HL7
