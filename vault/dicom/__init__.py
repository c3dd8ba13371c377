"""DICOM export to a PACS (docs/integration.md): a photo sent as a DICOM VL Photographic
Image to a configured DICOMweb STOW-RS endpoint, by a job with retries."""
