# The object store of the production profile: one private, versioned, KMS-encrypted bucket holding
#   lake/<dataset>/{landing,offline,ledger,quarantine,inference,monitor}/   the data lake (tasks/lake.py)
#   mlflow/                                                                  MLflow artifacts
#   bundles/                                                                 deployed model bundles
# and least-privilege policies for the two roles that use it: the flow runs and the scoring service.

data "aws_caller_identity" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  bucket_arn = "arn:aws:s3:::${var.bucket}"
}

resource "aws_kms_key" "closedloop" {
  description             = "closedloop: lake, model artifacts and bundles in s3://${var.bucket}"
  deletion_window_in_days = 30
  enable_key_rotation     = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "ClosedloopRolesUseThroughS3"
        Effect    = "Allow"
        Principal = { AWS = [var.flows_role_arn, var.serving_role_arn] }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource  = "*"
        Condition = { StringEquals = { "kms:ViaService" = "s3.${var.region}.amazonaws.com" } }
      },
    ]
  })
}

resource "aws_s3_bucket" "closedloop" {
  # checkov:skip=CKV_AWS_144:one region by design: the lake is rebuilt from the source systems, and versioning plus the 400-day quarantine keep what an audit needs; add replication where a regulator asks for a second region
  # checkov:skip=CKV2_AWS_62:nothing subscribes to object events; flows are started by Prefect schedules and events
  bucket = var.bucket
}

resource "aws_s3_bucket_logging" "closedloop" {
  bucket        = aws_s3_bucket.closedloop.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3/${var.bucket}/"
}

resource "aws_s3_bucket_public_access_block" "closedloop" {
  bucket                  = aws_s3_bucket.closedloop.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "closedloop" {
  bucket = aws_s3_bucket.closedloop.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "closedloop" {
  bucket = aws_s3_bucket.closedloop.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "closedloop" {
  bucket = aws_s3_bucket.closedloop.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.closedloop.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "closedloop" {
  bucket = aws_s3_bucket.closedloop.id

  rule {
    id     = "lake-to-infrequent-access"
    status = "Enabled"
    filter {
      prefix = "lake/"
    }
    transition {
      days          = var.landing_ia_days
      storage_class = "STANDARD_IA"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "quarantine-retention"
    status = "Enabled"
    filter {
      # S3 lifecycle filters match prefixes only: a quarantine folder per dataset needs one rule per dataset in
      # a multi-dataset bucket; this one covers the default use case
      prefix = "lake/credit_synthetic/quarantine/"
    }
    expiration {
      days = var.quarantine_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_retention_days
    }
  }

  rule {
    id     = "artifacts-keep-current"
    status = "Enabled"
    filter {
      prefix = ""
    }
    # model artifacts and bundles are evidence: current versions never expire, overwritten ones do
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_policy" "closedloop" {
  bucket = aws_s3_bucket.closedloop.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [local.bucket_arn, "${local.bucket_arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
}

# --- access logs -----------------------------------------------------------------------------------------
resource "aws_s3_bucket" "access_logs" {
  # checkov:skip=CKV_AWS_144:access logs stay in the bucket's region
  # checkov:skip=CKV2_AWS_62:nothing subscribes to access-log objects
  # checkov:skip=CKV_AWS_18:this is the access-log bucket; logging it into itself would loop
  bucket = "${var.bucket}-access-logs"
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.closedloop.arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {
      prefix = ""
    }
    expiration {
      days = 400
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# --- least-privilege policies ----------------------------------------------------------------------------
# Flow runs read and write the lake, MLflow's artifacts and the bundles; nothing else, and never delete a
# quarantined batch (the evidence of what was refused).
resource "aws_iam_policy" "flows" {
  name        = "closedloop-flows"
  description = "closedloop flow runs: lake, MLflow artifacts and bundles in s3://${var.bucket}"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "List"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = local.bucket_arn
        Condition = {
          StringLike = { "s3:prefix" = ["lake/*", "mlflow/*", "bundles/*"] }
        }
      },
      {
        Sid      = "ReadWrite"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject"]
        Resource = ["${local.bucket_arn}/lake/*", "${local.bucket_arn}/mlflow/*", "${local.bucket_arn}/bundles/*"]
      },
      {
        Sid      = "DeleteOutsideQuarantine"
        Effect   = "Allow"
        Action   = ["s3:DeleteObject"]
        Resource = ["${local.bucket_arn}/lake/*/landing/*", "${local.bucket_arn}/mlflow/*"]
      },
    ]
  })
}

# The scoring service reads models and writes its inference log; it cannot read the lake's raw data.
resource "aws_iam_policy" "serving" {
  name        = "closedloop-serving"
  description = "closedloop scoring service: read models, append the inference log"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadModels"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = ["${local.bucket_arn}/mlflow/*", "${local.bucket_arn}/bundles/*"]
      },
      {
        Sid      = "WriteInferenceLog"
        Effect   = "Allow"
        Action   = ["s3:PutObject"]
        Resource = ["${local.bucket_arn}/lake/*/inference/*"]
      },
    ]
  })
}
